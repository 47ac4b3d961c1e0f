/* fuzz_pbjson.c - the etcd gateway's JSON <-> protobuf converter
 * (pbjson.h) on the request messages a client sends it, and on protobuf
 * bytes turned into JSON.
 *
 * Input: byte 0 picks a message type (bits 0-4), the direction (bit 7)
 * and a stream of objects (bit 6); the rest is a JSON body (decode) or
 * wire bytes (encode).
 *
 * Invariants: decoding either refuses with a one-line reason, or gives
 * wire bytes that protobuf-c unpacks; the message written back as JSON is
 * valid JSON, decodes again (no refusal) to the same message, and writes
 * the same JSON again. Encoding wire bytes that unpack gives valid JSON.
 * A stream (a keep-alive body) splits into objects within the body, each
 * one a whole JSON object, in order, without overlap. */
#include "fuzz.h"

#include "etcd_gw.pb-c.h"
#include "etcd_rpc.pb-c.h"
#include "json.h"
#include "pbjson.h"
#include "pz.h"

static const ProtobufCMessageDescriptor *const types[] = {
    &etcdserverpb__range_request__descriptor,
    &etcdserverpb__put_request__descriptor,
    &etcdserverpb__delete_range_request__descriptor,
    &etcdserverpb__txn_request__descriptor,
    &etcdserverpb__compaction_request__descriptor,
    &etcdserverpb__member_list_request__descriptor,
    &etcdserverpb__member_add_request__descriptor,
    &etcdserverpb__member_remove_request__descriptor,
    &etcdserverpb__status_request__descriptor,
    &etcdserverpb__alarm_request__descriptor,
    &etcdserverpb__auth_status_request__descriptor,
    &etcdserverpb__txn_response__descriptor,
    &etcdserverpb__status_response__descriptor,
    &etcdserverpb__member_list_response__descriptor,
    &etcdserverpb__lease_grant_request__descriptor,
    &etcdserverpb__lease_revoke_request__descriptor,
    &etcdserverpb__lease_keep_alive_request__descriptor,
    &etcdserverpb__lease_time_to_live_request__descriptor,
    &etcdserverpb__lease_time_to_live_response__descriptor,
    &etcdserverpb__watch_request__descriptor,
    &pyazdb__etcdgw__watch_result__descriptor,
};

static void check_json(const struct pz_buf *b)
{
    struct json_val root;
    FUZZ_CHECKF(json_parse(b->data, b->len, &root) == 0 &&
                    root.type == JSON_OBJECT,
                "not a JSON object: %.*s", (int)b->len, b->data);
}

static ProtobufCMessage *decode(const ProtobufCMessageDescriptor *d,
                                const char *doc, size_t len, bool must)
{
    char err[256];
    struct pz_buf w;
    pz_buf_init(&w);
    err[0] = 0;
    int rv = pbjson_decode(d, doc, len, &w, err, sizeof err);
    if (rv < 0) {
        FUZZ_CHECKF(!must, "refused its own JSON: %s: %.*s", err, (int)len,
                    doc);
        FUZZ_CHECK(rv == PZ_EINVAL && err[0] && !strchr(err, '\n'));
        pz_buf_free(&w);
        return NULL;
    }
    ProtobufCMessage *m = protobuf_c_message_unpack(
        d, NULL, w.len, (const uint8_t *)(w.data ? w.data : ""));
    FUZZ_CHECKF(m != NULL, "wire bytes protobuf-c refuses (%zu bytes)",
                w.len);
    pz_buf_free(&w);
    return m;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const ProtobufCMessageDescriptor *d =
        types[(data[0] & 0x1f) % PZ_ARRAY_SIZE(types)];
    const char *body = (const char *)data + 1;
    size_t blen = size - 1;
    struct pz_buf a, b;
    pz_buf_init(&a);
    pz_buf_init(&b);
    if (data[0] & 0x80) {
        if (pbjson_encode_wire(d, (const uint8_t *)body, blen, &a) == 0)
            check_json(&a);
        pz_buf_free(&a);
        return 0;
    }
    if (data[0] & 0x40) {
        size_t off = 0, start = 0, n = 0, prev_end = 0;
        int rv;
        while ((rv = pbjson_next_object(body, blen, &off, &start, &n)) > 0) {
            struct json_val v;
            FUZZ_CHECK(start >= prev_end && start + n <= blen && n >= 2);
            FUZZ_CHECK(body[start] == '{' && body[start + n - 1] == '}');
            if (json_parse(body + start, n, &v) == 0)
                FUZZ_CHECK(v.type == JSON_OBJECT);
            ProtobufCMessage *x = decode(d, body + start, n, false);
            if (x)
                protobuf_c_message_free_unpacked(x, NULL);
            prev_end = start + n;
            FUZZ_CHECK(off == prev_end);
        }
        FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);
        return 0;
    }
    ProtobufCMessage *m = decode(d, body, blen, false);
    if (m == NULL)
        return 0;
    pbjson_encode(m, &a);
    check_json(&a);
    ProtobufCMessage *m2 = decode(d, a.data, a.len, true);
    pbjson_encode(m2, &b);
    FUZZ_CHECKF(a.len == b.len && memcmp(a.data, b.data, a.len) == 0,
                "JSON changed on a round trip:\n%.*s\n%.*s", (int)a.len,
                a.data, (int)b.len, b.data);
    size_t n1 = protobuf_c_message_get_packed_size(m);
    size_t n2 = protobuf_c_message_get_packed_size(m2);
    uint8_t *p1 = malloc(n1 + 1), *p2 = malloc(n2 + 1);
    protobuf_c_message_pack(m, p1);
    protobuf_c_message_pack(m2, p2);
    FUZZ_CHECK(n1 == n2 && memcmp(p1, p2, n1) == 0);
    free(p1);
    free(p2);
    protobuf_c_message_free_unpacked(m, NULL);
    protobuf_c_message_free_unpacked(m2, NULL);
    pz_buf_free(&a);
    pz_buf_free(&b);
    return 0;
}
