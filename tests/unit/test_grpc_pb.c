/* test_grpc_pb.c - the protobuf wire helpers and the kv messages, checked
 * against protobuf-c's encoding of kv.proto and against hand-made bytes. */
#include "grpc_pb.h"
#include "etcd_rpc.pb-c.h"
#include "kv.pb-c.h"
#include "test.h"

TEST(matches_protobuf_c)
{
    /* SetRequest through protobuf-c and through grpc_pb: same bytes. */
    Kv__SetRequest m = KV__SET_REQUEST__INIT;
    m.key = "hello";
    m.value = "world, a bit longer than the key";
    size_t n = kv__set_request__get_packed_size(&m);
    uint8_t *ref = pz_malloc(n);
    kv__set_request__pack(&m, ref);

    struct grpc_kv_req r = {.kind = GRPC_KV_SET,
                            .key = (const uint8_t *)m.key,
                            .klen = strlen(m.key),
                            .value = (const uint8_t *)m.value,
                            .vlen = strlen(m.value)};
    struct pz_buf b;
    pz_buf_init(&b);
    grpc_kv_req_encode(&b, &r);
    CHECK_EQ_INT(b.len, n);
    CHECK(memcmp(b.data, ref, n) == 0);
    pz_free(ref);

    /* GetResponse found=true: protobuf-c decodes what we encode. */
    pz_buf_reset(&b);
    grpc_kv_get_resp_encode(&b, "v1", 2, true);
    Kv__GetResponse *g =
        kv__get_response__unpack(NULL, b.len, (uint8_t *)b.data);
    CHECK(g != NULL);
    CHECK_EQ_STR(g->value, "v1");
    CHECK(g->found);
    kv__get_response__free_unpacked(g, NULL);

    /* Defaults are omitted: a missing key is an empty message. */
    pz_buf_reset(&b);
    grpc_kv_get_resp_encode(&b, "", 0, false);
    CHECK_EQ_INT(b.len, 0);
    grpc_kv_ok_resp_encode(&b, true);
    CHECK_EQ_INT(b.len, 2);
    CHECK(b.data[0] == 0x08 && b.data[1] == 0x01);
    pz_buf_free(&b);
}

TEST(binary_safe)
{
    static const uint8_t key[] = {'a', 0, 'b'};
    static const uint8_t val[] = {0, 0, 0xff, 0};
    struct grpc_kv_req r = {
        .kind = GRPC_KV_SET, .key = key, .klen = 3, .value = val, .vlen = 4};
    struct pz_buf b;
    pz_buf_init(&b);
    grpc_kv_req_encode(&b, &r);
    struct grpc_kv_req d;
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_SET, (uint8_t *)b.data, b.len, &d),
                 0);
    CHECK_EQ_INT(d.klen, 3);
    CHECK(memcmp(d.key, key, 3) == 0);
    CHECK_EQ_INT(d.vlen, 4);
    CHECK(memcmp(d.value, val, 4) == 0);
    pz_buf_reset(&b);
    grpc_kv_get_resp_encode(&b, val, 4, true);
    const uint8_t *v;
    size_t vl;
    bool found;
    CHECK_EQ_INT(
        grpc_kv_get_resp_decode((uint8_t *)b.data, b.len, &v, &vl, &found), 0);
    CHECK(found);
    CHECK_EQ_INT(vl, 4);
    CHECK(memcmp(v, val, 4) == 0);
    pz_buf_free(&b);
}

TEST(decode_rules)
{
    struct grpc_kv_req d;
    /* Empty message: empty key. */
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, NULL, 0, &d), 0);
    CHECK_EQ_INT(d.klen, 0);
    CHECK(d.key != NULL);
    CHECK(!d.stale);
    /* Unknown fields of every wire type are skipped; the last key wins. */
    static const uint8_t m1[] = {
        0x0a, 1,    'x',                      /* key = "x" */
        0x18, 0x96, 0x01,                     /* field 3 varint 150 */
        0x21, 1,    2,    3,   4, 5, 6, 7, 8, /* field 4 fixed64 */
        0x2d, 1,    2,    3,   4,             /* field 5 fixed32 */
        0x32, 2,    'z',  'z',                /* field 6 bytes */
        0x0a, 2,    'k',  '2',                /* key = "k2" */
        0x10, 0x01,                           /* stale = true */
    };
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, m1, sizeof m1, &d), 0);
    CHECK_EQ_INT(d.klen, 2);
    CHECK(memcmp(d.key, "k2", 2) == 0);
    CHECK(d.stale);
    /* For Delete, field 2 is unknown, whatever its type. */
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_DEL, m1, sizeof m1, &d), 0);
    /* For Set, field 2 must be bytes. */
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_SET, m1, sizeof m1, &d), PZ_EINVAL);
    /* Key with the wrong wire type. */
    static const uint8_t m2[] = {0x08, 0x01};
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, m2, sizeof m2, &d), PZ_EINVAL);
    /* Length past the end. */
    static const uint8_t m3[] = {0x0a, 5, 'a', 'b'};
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, m3, sizeof m3, &d), PZ_EINVAL);
    /* Truncated varint, field number 0, group wire type, bad fixed. */
    static const uint8_t m4[] = {0x18, 0x80};
    static const uint8_t m5[] = {0x02, 0x00};
    static const uint8_t m6[] = {0x0b, 0x0c};
    static const uint8_t m7[] = {0x21, 1, 2, 3};
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, m4, sizeof m4, &d), PZ_EINVAL);
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, m5, sizeof m5, &d), PZ_EINVAL);
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, m6, sizeof m6, &d), PZ_EINVAL);
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, m7, sizeof m7, &d), PZ_EINVAL);
    /* An 11-byte varint is malformed. */
    static const uint8_t m8[] = {0x18, 0xff, 0xff, 0xff, 0xff, 0xff,
                                 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, m8, sizeof m8, &d), PZ_EINVAL);
    /* A length one byte past the end. */
    static const uint8_t m9[] = {0x0a, 3, 'a', 'b'};
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, m9, sizeof m9, &d), PZ_EINVAL);
    /* A 10-byte varint holds 64 bits: its last byte is 0 or 1. */
    static const uint8_t m10[] = {0x18, 0xff, 0xff, 0xff, 0xff, 0xff,
                                  0xff, 0xff, 0xff, 0xff, 0x02};
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, m10, sizeof m10, &d),
                 PZ_EINVAL);
    static const uint8_t m11[] = {0x18, 0xff, 0xff, 0xff, 0xff, 0xff,
                                  0xff, 0xff, 0xff, 0xff, 0x01};
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, m11, sizeof m11, &d), 0);
    /* Groups and wire types 6 and 7 are refused in unknown fields too. */
    static const uint8_t group[] = {0x1b, 0x1c}, w6[] = {0x1e}, w7[] = {0x1f};
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, group, 2, &d), PZ_EINVAL);
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, w6, 1, &d), PZ_EINVAL);
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, w7, 1, &d), PZ_EINVAL);
    /* Get's field 2 (stale) is a varint. */
    static const uint8_t m13[] = {0x0a, 1, 'k', 0x12, 1, 'x'};
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, m13, sizeof m13, &d),
                 PZ_EINVAL);
    /* Text that is not protobuf at all. */
    static const char junk[] = "{\"key\":\"a\"}";
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, (const uint8_t *)junk,
                                    sizeof junk - 1, &d),
                 PZ_EINVAL);
}

TEST(field_iteration)
{
    struct pz_buf b;
    pz_buf_init(&b);
    grpc_pb_put_varint(&b, 1, UINT64_MAX);
    grpc_pb_put_varint(&b, 536870911, 0);
    grpc_pb_put_bytes(&b, 2, "", 0);
    const uint8_t *p = (uint8_t *)b.data, *end = p + b.len;
    struct grpc_pb_field f;
    CHECK_EQ_INT(grpc_pb_next(&p, end, &f), 1);
    CHECK(f.num == 1 && f.wire == GRPC_PB_VARINT && f.v == UINT64_MAX);
    CHECK_EQ_INT(grpc_pb_next(&p, end, &f), 1);
    CHECK(f.num == 536870911 && f.v == 0);
    CHECK_EQ_INT(grpc_pb_next(&p, end, &f), 1);
    CHECK(f.num == 2 && f.wire == GRPC_PB_LEN && f.len == 0);
    CHECK_EQ_INT(grpc_pb_next(&p, end, &f), 0);
    bool ok = true;
    pz_buf_reset(&b);
    grpc_kv_ok_resp_encode(&b, false);
    CHECK_EQ_INT(b.len, 0);
    CHECK_EQ_INT(grpc_kv_ok_resp_decode((uint8_t *)b.data, 0, &ok), 0);
    CHECK(!ok);
    pz_buf_free(&b);
}

/* An empty message arrives as an empty buffer: (NULL, 0). Decoding it
 * must not do arithmetic on the null pointer (clang's
 * -fsanitize=undefined reports even NULL + 0). */
TEST(empty_message_without_buffer)
{
    struct grpc_kv_req r;
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_GET, NULL, 0, &r), 0);
    CHECK(r.key != NULL && r.klen == 0 && !r.stale);
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_SET, NULL, 0, &r), 0);
    CHECK(r.key != NULL && r.klen == 0 && r.value != NULL && r.vlen == 0);
    CHECK_EQ_INT(grpc_kv_req_decode(GRPC_KV_DEL, NULL, 0, &r), 0);
    const uint8_t *v = NULL;
    size_t vl = 1;
    bool found = true, ok = true;
    CHECK_EQ_INT(grpc_kv_get_resp_decode(NULL, 0, &v, &vl, &found), 0);
    CHECK(v != NULL && vl == 0 && !found);
    CHECK_EQ_INT(grpc_kv_ok_resp_decode(NULL, 0, &ok), 0);
    CHECK(!ok);
}

/* A WatchResponse written as etcd_watch.c writes a large one in pieces
 * (the response without events, then each event's field head and bytes)
 * is the whole message protobuf-c packs, and its length is the sum the
 * length prefix announces. */
TEST(watch_response_in_pieces)
{
    static uint8_t big[300];
    memset(big, 'v', sizeof big);
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    h.cluster_id = 17;
    h.revision = 123456;
    Mvccpb__KeyValue kvs[6];
    Mvccpb__Event evs[3], *evp[3];
    for (int i = 0; i < 3; i++) {
        Mvccpb__KeyValue kinit = MVCCPB__KEY_VALUE__INIT;
        Mvccpb__Event einit = MVCCPB__EVENT__INIT;
        kvs[2 * i] = kvs[2 * i + 1] = kinit;
        kvs[2 * i].key.data = (uint8_t *)"key";
        kvs[2 * i].key.len = 3;
        kvs[2 * i].value.data = big;
        kvs[2 * i].value.len = i ? 100u * (size_t)i : sizeof big;
        kvs[2 * i].mod_revision = 123456;
        kvs[2 * i + 1] = kvs[2 * i];
        evs[i] = einit;
        evs[i].type = i == 1 ? MVCCPB__EVENT__EVENT_TYPE__DELETE
                             : MVCCPB__EVENT__EVENT_TYPE__PUT;
        evs[i].kv = &kvs[2 * i];
        evs[i].prev_kv = i == 2 ? &kvs[2 * i + 1] : NULL;
        evp[i] = &evs[i];
    }
    Etcdserverpb__WatchResponse r = ETCDSERVERPB__WATCH_RESPONSE__INIT;
    r.header = &h;
    r.watch_id = 300;
    size_t plen = etcdserverpb__watch_response__get_packed_size(&r);
    struct pz_buf pieces;
    pz_buf_init(&pieces);
    pz_buf_reserve(&pieces, plen);
    pieces.len = etcdserverpb__watch_response__pack(&r, (uint8_t *)pieces.data);
    size_t total = plen;
    for (int i = 0; i < 3; i++) {
        size_t n = mvccpb__event__get_packed_size(evp[i]);
        size_t at = pieces.len;
        grpc_pb_put_len_head(&pieces, 11, n);
        CHECK_EQ_INT(pieces.len - at, grpc_pb_len_head_size(11, n));
        pz_buf_reserve(&pieces, n);
        pieces.len += mvccpb__event__pack(evp[i],
                                          (uint8_t *)pieces.data + pieces.len);
        total += grpc_pb_len_head_size(11, n) + n;
    }
    r.events = evp;
    r.n_events = 3;
    size_t wlen = etcdserverpb__watch_response__get_packed_size(&r);
    uint8_t *whole = pz_malloc(wlen);
    etcdserverpb__watch_response__pack(&r, whole);
    CHECK_EQ_INT(pieces.len, wlen);
    CHECK_EQ_INT(total, wlen);
    CHECK(memcmp(pieces.data, whole, wlen) == 0);
    pz_free(whole);
    pz_buf_free(&pieces);
    /* heads of every length of varint */
    size_t lens[] = {0, 127, 128, 16383, 16384, (size_t)1 << 21,
                     (size_t)UINT32_MAX};
    uint32_t nums[] = {1, 15, 16, 2047, 2048};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(lens); i++) {
        for (size_t j = 0; j < PZ_ARRAY_SIZE(nums); j++) {
            struct pz_buf b;
            pz_buf_init(&b);
            grpc_pb_put_len_head(&b, nums[j], lens[i]);
            CHECK_EQ_INT(b.len, grpc_pb_len_head_size(nums[j], lens[i]));
            pz_buf_free(&b);
        }
    }
}

static const struct test_case cases[] = {
    TEST_ENTRY(matches_protobuf_c),
    TEST_ENTRY(binary_safe),
    TEST_ENTRY(decode_rules),
    TEST_ENTRY(field_iteration),
    TEST_ENTRY(empty_message_without_buffer),
    TEST_ENTRY(watch_response_in_pieces),
    TEST_END,
};

const struct test_suite suite_grpc_pb = {"grpc_pb", cases};
