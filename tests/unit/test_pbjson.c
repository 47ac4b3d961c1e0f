/* test_pbjson.c - the protobuf <-> JSON converter of the etcd gateway:
 * etcd's JSON in, wire bytes that protobuf-c unpacks to the expected
 * fields, JSON out as etcd's gateway writes it; every kind of bad value
 * refused with its field's path. */
#include <stdlib.h>

#include "etcd_gw.pb-c.h"
#include "etcd_rpc.pb-c.h"
#include "pbjson.h"
#include "test.h"

/* Decode doc as d; NULL with the reason in err when refused. */
static ProtobufCMessage *dec(const ProtobufCMessageDescriptor *d,
                             const char *doc, char *err, size_t errlen)
{
    struct pz_buf b;
    pz_buf_init(&b);
    err[0] = 0;
    if (pbjson_decode(d, doc, strlen(doc), &b, err, errlen) < 0) {
        pz_buf_free(&b);
        return NULL;
    }
    ProtobufCMessage *m =
        protobuf_c_message_unpack(d, NULL, b.len, (const uint8_t *)b.data);
    pz_buf_free(&b);
    return m;
}

/* JSON -> protobuf -> JSON. */
static char *round_trip(const ProtobufCMessageDescriptor *d, const char *doc)
{
    char err[256];
    ProtobufCMessage *m = dec(d, doc, err, sizeof err);
    if (m == NULL) {
        fprintf(stderr, "    refused: %s\n", err);
        return NULL;
    }
    struct pz_buf out;
    pz_buf_init(&out);
    pbjson_encode(m, &out);
    protobuf_c_message_free_unpacked(m, NULL);
    pz_buf_append(&out, "", 1);
    return out.data;
}

/* The reason doc is refused ("" when it is not). */
static const char *refusal(const ProtobufCMessageDescriptor *d,
                           const char *doc)
{
    static char err[256];
    ProtobufCMessage *m = dec(d, doc, err, sizeof err);
    if (m) {
        protobuf_c_message_free_unpacked(m, NULL);
        return "";
    }
    return err;
}

#define RANGE (&etcdserverpb__range_request__descriptor)
#define TXN (&etcdserverpb__txn_request__descriptor)

TEST(range_request_fields)
{
    char err[256];
    Etcdserverpb__RangeRequest *r = (void *)dec(
        RANGE,
        "{\"key\":\"Zm9v\",\"range_end\":\"AA==\",\"limit\":\"-5\","
        "\"revision\":9223372036854775807,\"sort_order\":\"DESCEND\","
        "\"sortTarget\":4,\"serializable\":true,\"keys_only\":false,"
        "\"count_only\":null,\"unknown\":[1,{\"a\":2}]}",
        err, sizeof err);
    CHECK(r != NULL);
    CHECK(r->key.len == 3 && memcmp(r->key.data, "foo", 3) == 0);
    CHECK(r->range_end.len == 1 && r->range_end.data[0] == 0);
    CHECK_EQ_INT(r->limit, -5);
    CHECK(r->revision == INT64_MAX);
    CHECK_EQ_INT(r->sort_order, ETCDSERVERPB__RANGE_REQUEST__SORT_ORDER__DESCEND);
    CHECK_EQ_INT(r->sort_target, ETCDSERVERPB__RANGE_REQUEST__SORT_TARGET__VALUE);
    CHECK(r->serializable && !r->keys_only && !r->count_only);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    /* empty, null and {} are the empty message */
    static const char *const empty[] = {"", " \n", "null", "{}"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(empty); i++) {
        r = (void *)dec(RANGE, empty[i], err, sizeof err);
        CHECK(r != NULL && r->key.len == 0 && r->limit == 0);
        protobuf_c_message_free_unpacked(&r->base, NULL);
    }
    /* the last of repeated members counts */
    r = (void *)dec(RANGE, "{\"limit\":1,\"limit\":2}", err, sizeof err);
    CHECK(r != NULL && r->limit == 2);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    /* int64 extremes, as numbers and strings */
    r = (void *)dec(RANGE, "{\"limit\":-9223372036854775808}", err,
                    sizeof err);
    CHECK(r != NULL && r->limit == INT64_MIN);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    r = (void *)dec(RANGE, "{\"limit\":\"-0\"}", err, sizeof err);
    CHECK(r != NULL && r->limit == 0);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

TEST(txn_round_trip)
{
    /* etcd's own answer shape: oneofs by member name, enums by name,
     * defaults left out, 64-bit numbers as strings */
    char *s = round_trip(
        TXN, "{\"compare\":[{\"key\":\"Zm9v\",\"result\":\"EQUAL\","
             "\"target\":\"VALUE\",\"value\":\"YmFy\"},"
             "{\"key\":\"YQ==\",\"target\":\"MOD\",\"mod_revision\":\"0\"}],"
             "\"success\":[{\"request_put\":{\"key\":\"Zm9v\",\"value\":"
             "\"Yg==\",\"lease\":12}},{\"requestRange\":{\"key\":\"Zm9v\"}}],"
             "\"failure\":[{\"request_delete_range\":{\"key\":\"Zm9v\","
             "\"prev_kv\":true}}]}");
    CHECK(s != NULL);
    CHECK_EQ_STR(s,
                 "{\"compare\":[{\"target\":\"VALUE\",\"key\":\"Zm9v\","
                 "\"value\":\"YmFy\"},{\"target\":\"MOD\",\"key\":\"YQ==\","
                 "\"mod_revision\":\"0\"}],\"success\":[{\"request_put\":{"
                 "\"key\":\"Zm9v\",\"value\":\"Yg==\",\"lease\":\"12\"}},"
                 "{\"request_range\":{\"key\":\"Zm9v\"}}],\"failure\":[{"
                 "\"request_delete_range\":{\"key\":\"Zm9v\",\"prev_kv\":"
                 "true}}]}");
    free(s);
}

TEST(encode_like_etcd)
{
    Etcdserverpb__ResponseHeader h = ETCDSERVERPB__RESPONSE_HEADER__INIT;
    h.cluster_id = UINT64_MAX;
    h.member_id = 1;
    h.revision = 0; /* left out */
    h.raft_term = 2;
    Etcdserverpb__StatusResponse st = ETCDSERVERPB__STATUS_RESPONSE__INIT;
    st.header = &h;
    st.version = "3.4.0";
    st.dbsize = 20480;
    char *errs[] = {"a\"b", "\x01"};
    st.errors = errs;
    st.n_errors = 2;
    st.islearner = true;
    struct pz_buf b;
    pz_buf_init(&b);
    pbjson_encode(&st.base, &b);
    pz_buf_append(&b, "", 1);
    CHECK_EQ_STR(b.data,
                 "{\"header\":{\"cluster_id\":\"18446744073709551615\","
                 "\"member_id\":\"1\",\"raft_term\":\"2\"},\"version\":"
                 "\"3.4.0\",\"dbSize\":\"20480\",\"errors\":[\"a\\\"b\","
                 "\"\\u0001\"],\"isLearner\":true}");
    pz_buf_free(&b);
    /* an enum value without a name goes out as its number; the zero
     * member of a oneof goes out when it is the one set */
    Etcdserverpb__Compare c = ETCDSERVERPB__COMPARE__INIT;
    c.result = 7;
    c.target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VERSION;
    c.version = 0;
    pz_buf_init(&b);
    pbjson_encode(&c.base, &b);
    pz_buf_append(&b, "", 1);
    CHECK_EQ_STR(b.data, "{\"result\":7,\"version\":\"0\"}");
    pz_buf_free(&b);
    /* wire bytes that are not the message are refused */
    pz_buf_init(&b);
    CHECK(pbjson_encode_wire(RANGE, (const uint8_t *)"\x0a\x05xx", 4, &b) < 0);
    pz_buf_free(&b);
}

TEST(refusals)
{
    static const struct {
        const ProtobufCMessageDescriptor *d;
        const char *doc, *why;
    } bad[] = {
        {RANGE, "{\"key\":", "the body is not valid JSON"},
        {RANGE, "{} x", "the body is not valid JSON"},
        {RANGE, "[]", "the body is not a JSON object"},
        {RANGE, "\"x\"", "the body is not a JSON object"},
        {RANGE, "{\"key\":\"YQ\"}",
         "key: not valid base64 (standard alphabet, padded)"},
        {RANGE, "{\"key\":\"Y-_=\"}",
         "key: not valid base64 (standard alphabet, padded)"},
        {RANGE, "{\"key\":5}", "key: not a base64 string"},
        {RANGE, "{\"limit\":1.5}", "limit: not an integer"},
        {RANGE, "{\"limit\":1e3}", "limit: not an integer"},
        {RANGE, "{\"limit\":\" 3\"}", "limit: not an integer"},
        {RANGE, "{\"limit\":\"+3\"}", "limit: not an integer"},
        {RANGE, "{\"limit\":true}", "limit: not an integer"},
        {RANGE, "{\"limit\":9223372036854775808}",
         "limit: integer out of range"},
        {RANGE, "{\"limit\":-9223372036854775809}",
         "limit: integer out of range"},
        {RANGE, "{\"limit\":\"184467440737095516150\"}",
         "limit: integer out of range"},
        {RANGE, "{\"serializable\":1}", "serializable: not true or false"},
        {RANGE, "{\"sort_order\":\"UP\"}",
         "sort_order: unknown value for enum "
         "etcdserverpb.RangeRequest.SortOrder"},
        {RANGE, "{\"sort_order\":2147483648}",
         "sort_order: integer out of range"},
        {RANGE, "{\"sort_order\":[]}",
         "sort_order: not an enum value name or number"},
        {TXN, "{\"compare\":{}}", "compare: not an array"},
        {TXN, "{\"compare\":[null]}", "compare[0]: null is not allowed here"},
        {TXN, "{\"success\":[{},{\"request_put\":5}]}",
         "success[1].request_put: not an object"},
        {TXN, "{\"success\":[{\"request_put\":{\"key\":\"@@@@\"}}]}",
         "success[0].request_put.key: not valid base64 (standard alphabet, "
         "padded)"},
        {&etcdserverpb__compaction_request__descriptor,
         "{\"physical\":\"yes\"}", "physical: not true or false"},
        {&etcdserverpb__member_add_request__descriptor,
         "{\"peerURLs\":[\"a\\u0000b\"]}",
         "peerURLs[0]: string is not valid UTF-8 without NUL"},
        {&etcdserverpb__member_add_request__descriptor,
         "{\"peerURLs\":[\"\xff\"]}",
         "peerURLs[0]: string is not valid UTF-8 without NUL"},
        {&etcdserverpb__member_add_request__descriptor,
         "{\"peerURLs\":[1]}", "peerURLs[0]: not a string"},
        {&etcdserverpb__member_remove_request__descriptor, "{\"ID\":-1}",
         "ID: negative value for an unsigned field"},
        {&etcdserverpb__member_remove_request__descriptor,
         "{\"ID\":\"18446744073709551616\"}", "ID: integer out of range"},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++)
        CHECK_EQ_STR(refusal(bad[i].d, bad[i].doc), bad[i].why);
    /* unsigned maximum, both spellings of a name */
    CHECK_EQ_STR(refusal(&etcdserverpb__member_remove_request__descriptor,
                         "{\"ID\":\"18446744073709551615\"}"),
                 "");
    CHECK_EQ_STR(refusal(&etcdserverpb__watch_create_request__descriptor,
                         "{\"filters\":[\"NOPUT\",1],\"prevKv\":true,"
                         "\"start_revision\":\"3\"}"),
                 "");
    /* nesting deeper than the reader allows is refused, not recursed */
    struct pz_buf deep;
    pz_buf_init(&deep);
    for (int i = 0; i < 100; i++)
        pz_buf_appendf(&deep, "{\"request_txn\":");
    pz_buf_appendf(&deep, "{}");
    for (int i = 0; i < 100; i++)
        pz_buf_append(&deep, "}", 1);
    pz_buf_append(&deep, "", 1);
    CHECK_EQ_STR(refusal(&etcdserverpb__request_op__descriptor, deep.data),
                 "the body is not valid JSON");
    pz_buf_free(&deep);
}

TEST(object_stream)
{
    const char *doc = " {\"ID\":1}\n{\"a\":\"}{\\\"\",\"b\":[{}]}{}  ";
    size_t off = 0, start, n;
    CHECK_EQ_INT(pbjson_next_object(doc, strlen(doc), &off, &start, &n), 1);
    CHECK(n == 8 && memcmp(doc + start, "{\"ID\":1}", n) == 0);
    CHECK_EQ_INT(pbjson_next_object(doc, strlen(doc), &off, &start, &n), 1);
    CHECK(n == 21 && doc[start] == '{' && doc[start + n - 1] == '}');
    CHECK_EQ_INT(pbjson_next_object(doc, strlen(doc), &off, &start, &n), 1);
    CHECK(n == 2);
    CHECK_EQ_INT(pbjson_next_object(doc, strlen(doc), &off, &start, &n), 0);
    /* the last one: a fuzz finding, a bracket closing another */
    static const char *const bad[] = {"[]", "{", "{\"a\":\"}", "1", "{}x",
                                      "{[}]", "{\x8c" "B]\x01z"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        off = 0;
        int rv;
        while ((rv = pbjson_next_object(bad[i], strlen(bad[i]), &off, &start,
                                        &n)) > 0)
            ;
        CHECK_EQ_INT(rv, PZ_EINVAL);
    }
    /* nesting past JSON_MAX_DEPTH is refused, not overflowed */
    char deep[2 * JSON_MAX_DEPTH + 8];
    size_t d = 0;
    for (int i = 0; i <= JSON_MAX_DEPTH; i++)
        deep[d++] = i ? '[' : '{';
    off = 0;
    CHECK_EQ_INT(pbjson_next_object(deep, d, &off, &start, &n), PZ_EINVAL);
}

static const struct test_case cases[] = {
    TEST_ENTRY(range_request_fields),
    TEST_ENTRY(txn_round_trip),
    TEST_ENTRY(encode_like_etcd),
    TEST_ENTRY(refusals),
    TEST_ENTRY(object_stream),
    TEST_END,
};

const struct test_suite suite_pbjson = {"pbjson", cases};
