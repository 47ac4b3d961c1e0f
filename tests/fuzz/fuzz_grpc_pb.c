/* fuzz_grpc_pb.c - every gRPC request message a client can send, decoded
 * as grpc.c decodes it, and the responses pyazdb-cli and the forwarding
 * client decode:
 *  - kv.GetRequest, SetRequest, DeleteRequest (grpc_kv_req_decode), and
 *    the kv responses (grpc_kv_get_resp_decode, grpc_kv_ok_resp_decode);
 *  - the field reader under them (grpc_pb_next);
 *  - pyazdb.StatusRequest/StatusResponse and grpc.health.v1's
 *    HealthCheckRequest (protobuf-c, with grpc_pb_allocator);
 *  - grpc.reflection.v1 ServerReflectionRequest, answered by
 *    grpc_reflect_answer over the embedded descriptor set;
 *  - etcd's WatchRequest (a create's keys and start as etcd_watch.c
 *    maps them: etcd_watch_keys, etcd_watch_start) and the Lease
 *    requests (protobuf-c, with grpc_pb_allocator).
 *
 * The input is one message payload, handed over as the server hands it:
 * an empty payload is a NULL pointer (an empty pz_buf). Invariants: a
 * decoded kv request borrows only bytes of the payload, re-encodes to a
 * message that decodes the same, and, when protobuf-c's generated decoder
 * for kv.proto decodes it too, has the same values (protobuf-c cuts
 * strings at a NUL byte: compared up to there); a
 * reflection answer is a valid ServerReflectionResponse. */
#include "fuzz.h"

#include "cluster.pb-c.h"
#include "etcd_map.h"
#include "etcd_rpc.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "grpc_pb.h"
#include "grpc_reflect.h"
#include "kv.pb-c.h"
#include "pz.h"

static struct grpc_reflect reflect;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    PZ_UNUSED(argc);
    PZ_UNUSED(argv);
    int rv = grpc_reflect_init(&reflect, grpc_descriptor_set,
                               grpc_descriptor_set_len);
    FUZZ_CHECK(rv == 0 && reflect.n_files > 0);
    return 0;
}

static bool inside(const uint8_t *p, size_t n, const uint8_t *msg, size_t len)
{
    if (n == 0)
        return true;
    return msg != NULL && p >= msg && p + n <= msg + len;
}

/* protobuf-c's view of the same kv request: 1 decoded, 0 refused. Its
 * strings end at a NUL byte; *key and *value point to them. */
static int pbc_kv(int kind, const uint8_t *msg, size_t len, void **obj,
                  const char **key, const char **value, bool *stale)
{
    *key = *value = "";
    *stale = false;
    switch (kind) {
    case GRPC_KV_GET: {
        Kv__GetRequest *q =
            kv__get_request__unpack(&grpc_pb_allocator, len, msg);
        *obj = q;
        if (q) {
            *key = q->key;
            *stale = q->stale;
        }
        return q != NULL;
    }
    case GRPC_KV_SET: {
        Kv__SetRequest *q =
            kv__set_request__unpack(&grpc_pb_allocator, len, msg);
        *obj = q;
        if (q) {
            *key = q->key;
            *value = q->value;
        }
        return q != NULL;
    }
    default: {
        Kv__DeleteRequest *q =
            kv__delete_request__unpack(&grpc_pb_allocator, len, msg);
        *obj = q;
        if (q)
            *key = q->key;
        return q != NULL;
    }
    }
}

static void pbc_free(void *obj)
{
    if (obj)
        protobuf_c_message_free_unpacked(obj, &grpc_pb_allocator);
}

/* Equal as protobuf-c sees them: it cuts strings at the first NUL. */
static bool same_str(const char *s, const uint8_t *p, size_t n)
{
    const uint8_t *nul = memchr(p, 0, n);
    size_t k = nul ? (size_t)(nul - p) : n;
    return strlen(s) == k && memcmp(s, p, k) == 0;
}

static void check_kv(int kind, const uint8_t *msg, size_t len)
{
    struct grpc_kv_req q;
    int rv = grpc_kv_req_decode(kind, msg, len, &q);
    FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);

    void *obj;
    const char *pkey, *pvalue;
    bool pstale;
    int prv = pbc_kv(kind, msg, len, &obj, &pkey, &pvalue, &pstale);
    /* protobuf-c is no oracle of validity: it takes a known field with
     * another wire type as unknown and a tag over 32 bits for its low 32
     * bits (as Google's parsers do; we refuse both, grpc_pb.h), and it even
     * stops at a zero tag, ignoring what follows. When both decode, they
     * must agree. */
    if (rv != 0) {
        pbc_free(obj);
        return;
    }
    FUZZ_CHECK(q.kind == kind && q.key != NULL && q.value != NULL);
    FUZZ_CHECK(inside(q.key, q.klen, msg, len));
    FUZZ_CHECK(inside(q.value, q.vlen, msg, len));
    FUZZ_CHECK(kind == GRPC_KV_SET || q.vlen == 0);
    FUZZ_CHECK(kind == GRPC_KV_GET || !q.stale);
    if (prv) {
        FUZZ_CHECKF(same_str(pkey, q.key, q.klen), "kind %d: key differs",
                    kind);
        FUZZ_CHECKF(same_str(pvalue, q.value, q.vlen),
                    "kind %d: value differs", kind);
        FUZZ_CHECKF(pstale == q.stale, "kind %d: stale differs", kind);
    }
    pbc_free(obj);

    /* Re-encoded, it decodes to the same request. */
    struct pz_buf b;
    struct grpc_kv_req q2;
    pz_buf_init(&b);
    grpc_kv_req_encode(&b, &q);
    FUZZ_CHECK(b.len <= len);
    uint8_t *copy = b.len ? fuzz_dup(b.data, b.len) : NULL;
    FUZZ_CHECK(grpc_kv_req_decode(kind, copy, b.len, &q2) == 0);
    FUZZ_CHECK(q2.klen == q.klen && q2.vlen == q.vlen &&
               q2.stale == q.stale);
    FUZZ_CHECK(q.klen == 0 || memcmp(q.key, q2.key, q.klen) == 0);
    FUZZ_CHECK(q.vlen == 0 || memcmp(q.value, q2.value, q.vlen) == 0);
    free(copy);
    pz_buf_free(&b);
}

static void check_fields(const uint8_t *msg, size_t len)
{
    const uint8_t *p = msg, *end = msg ? msg + len : NULL;
    struct grpc_pb_field f;
    int rv;
    size_t n = 0;
    while ((rv = grpc_pb_next(&p, end, &f)) == 1) {
        FUZZ_CHECK(p <= end && f.num >= 1 && f.num <= 0x1fffffff);
        FUZZ_CHECK(f.wire == GRPC_PB_VARINT || f.wire == GRPC_PB_I64 ||
                   f.wire == GRPC_PB_LEN || f.wire == GRPC_PB_I32);
        if (f.wire == GRPC_PB_LEN)
            FUZZ_CHECK(inside(f.data, f.len, msg, len));
        FUZZ_CHECK(++n <= len); /* every field takes a byte at least */
    }
    FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);
}

static void check_responses(const uint8_t *msg, size_t len)
{
    const uint8_t *v = NULL;
    size_t vl = 99;
    bool found = true, ok = true;
    int rv = grpc_kv_get_resp_decode(msg, len, &v, &vl, &found);
    FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);
    if (rv == 0)
        FUZZ_CHECK(v != NULL && inside(v, vl, msg, len));
    rv = grpc_kv_ok_resp_decode(msg, len, &ok);
    FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);

    Pyazdb__StatusResponse *sr =
        pyazdb__status_response__unpack(&grpc_pb_allocator, len, msg);
    if (sr)
        pyazdb__status_response__free_unpacked(sr, &grpc_pb_allocator);
}

static void check_protobuf_c(const uint8_t *msg, size_t len)
{
    Pyazdb__StatusRequest *st =
        pyazdb__status_request__unpack(&grpc_pb_allocator, len, msg);
    if (st)
        pyazdb__status_request__free_unpacked(st, &grpc_pb_allocator);
    Grpc__Health__V1__HealthCheckRequest *hq =
        grpc__health__v1__health_check_request__unpack(&grpc_pb_allocator,
                                                       len, msg);
    if (hq) {
        FUZZ_CHECK(hq->service != NULL);
        grpc__health__v1__health_check_request__free_unpacked(
            hq, &grpc_pb_allocator);
    }
}

static void check_reflection(const uint8_t *msg, size_t len)
{
    struct pz_buf out;
    pz_buf_init(&out);
    int rv = grpc_reflect_answer(&reflect, msg, len, &out);
    FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);
    if (rv != 0) {
        FUZZ_CHECK(out.len == 0);
    } else {
        Grpc__Reflection__V1__ServerReflectionResponse *resp =
            grpc__reflection__v1__server_reflection_response__unpack(
                &grpc_pb_allocator, out.len, (const uint8_t *)out.data);
        /* Every answer parses, also to a request with unknown fields
         * (one with field number 0 once got an answer no parser took:
         * regressions/grpc_pb/reflection-echoes-field-0). */
        FUZZ_CHECK(resp != NULL);
        if (resp != NULL) {
            FUZZ_CHECK(
                resp->message_response_case !=
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE__NOT_SET);
            grpc__reflection__v1__server_reflection_response__free_unpacked(
                resp, &grpc_pb_allocator);
        }
    }
    pz_buf_free(&out);
}

static int keycmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    size_t n = al < bl ? al : bl;
    int c = n ? memcmp(a, b, n) : 0;
    return c ? c : al < bl ? -1 : al > bl;
}

static void check_etcd(const uint8_t *msg, size_t len)
{
    Etcdserverpb__WatchRequest *w =
        etcdserverpb__watch_request__unpack(&grpc_pb_allocator, len, msg);
    if (w && w->request_union_case ==
                 ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST) {
        Etcdserverpb__WatchCreateRequest *c = w->create_request;
        struct etcd_watch_keys k;
        int rv = etcd_watch_keys(c->key.data, c->key.len, c->range_end.data,
                                 c->range_end.len, &k);
        FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);
        if (rv == 0) {
            /* a non-empty range: from < to, the key itself inside */
            FUZZ_CHECK(k.flen >= 1 && k.from != NULL);
            if (k.to)
                FUZZ_CHECK(keycmp(k.from, k.flen, k.to, k.tlen) < 0);
            if (c->key.len)
                FUZZ_CHECK(k.flen == c->key.len &&
                           memcmp(k.from, c->key.data, k.flen) == 0);
            etcd_watch_keys_free(&k);
        } else {
            FUZZ_CHECK(k.from == NULL && k.to == NULL);
        }
        uint64_t start = 0;
        int srv = etcd_watch_start(c->start_revision, 10, 5, &start);
        if (srv == 0)
            FUZZ_CHECK(start >= 5);
        else if (srv == PZ_EINVAL)
            FUZZ_CHECK(c->start_revision < 0);
        else /* etcd's numbers, the store's + 1: 5 is the store's 4 */
            FUZZ_CHECK(srv == PZ_ENOTFOUND && c->start_revision > 0 &&
                       c->start_revision <= 5);
    }
    if (w)
        etcdserverpb__watch_request__free_unpacked(w, &grpc_pb_allocator);
    static const ProtobufCMessageDescriptor *const lease[] = {
        &etcdserverpb__lease_grant_request__descriptor,
        &etcdserverpb__lease_revoke_request__descriptor,
        &etcdserverpb__lease_keep_alive_request__descriptor,
        &etcdserverpb__lease_time_to_live_request__descriptor,
        &etcdserverpb__lease_leases_request__descriptor,
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(lease); i++) {
        ProtobufCMessage *m =
            protobuf_c_message_unpack(lease[i], &grpc_pb_allocator, len, msg);
        if (m)
            protobuf_c_message_free_unpacked(m, &grpc_pb_allocator);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* As grpc.c passes it: the reader's buffer, NULL when empty. */
    uint8_t *msg = size ? fuzz_dup(data, size) : NULL;
    check_kv(GRPC_KV_GET, msg, size);
    check_kv(GRPC_KV_SET, msg, size);
    check_kv(GRPC_KV_DEL, msg, size);
    check_fields(msg, size);
    check_responses(msg, size);
    check_protobuf_c(msg, size);
    check_reflection(msg, size);
    check_etcd(msg, size);
    free(msg);
    return 0;
}
