/* test_grpc_reflect.c - server reflection over the embedded descriptor set:
 * the index, every request kind, errors inside a normal response. */
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "grpc_frame.h"
#include "grpc_pb.h"
#include "grpc_reflect.h"
#include "test.h"

typedef Grpc__Reflection__V1__ServerReflectionResponse resp_t;
typedef Grpc__Reflection__V1__ServerReflectionRequest req_t;

#define REQ_INIT GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT
#define REQ_CASE(x)                                                            \
    GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_##x
#define RESP_CASE(x)                                                           \
    GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_##x

static resp_t *ask(const struct grpc_reflect *r,
                   Grpc__Reflection__V1__ServerReflectionRequest *q)
{
    size_t n =
        grpc__reflection__v1__server_reflection_request__get_packed_size(q);
    uint8_t *b = pz_malloc(n + 1);
    grpc__reflection__v1__server_reflection_request__pack(q, b);
    struct pz_buf out;
    pz_buf_init(&out);
    int rv = grpc_reflect_answer(r, b, n, &out);
    pz_free(b);
    if (rv < 0) {
        pz_buf_free(&out);
        return NULL;
    }
    resp_t *resp = grpc__reflection__v1__server_reflection_response__unpack(
        &grpc_pb_allocator, out.len, (uint8_t *)out.data);
    pz_buf_free(&out);
    return resp;
}

static void free_resp(resp_t *r)
{
    grpc__reflection__v1__server_reflection_response__free_unpacked(
        r, &grpc_pb_allocator);
}

/* Name of a serialized FileDescriptorProto. */
static char *fd_name(const ProtobufCBinaryData *d)
{
    const uint8_t *p = d->data, *end = p + d->len;
    struct grpc_pb_field f;
    while (grpc_pb_next(&p, end, &f) == 1)
        if (f.num == 1 && f.wire == GRPC_PB_LEN)
            return pz_strndup((const char *)f.data, f.len);
    return pz_strdup("");
}

static int init(struct grpc_reflect *r)
{
    return grpc_reflect_init(r, grpc_descriptor_set, grpc_descriptor_set_len);
}

TEST(index)
{
    struct grpc_reflect r;
    CHECK_EQ_INT(init(&r), 0);
    CHECK(r.n_files >= 5);
    static const struct {
        const char *name;
        int kind;
    } want[] = {
        {"kv.KVService", GRPC_REFLECT_SERVICE},
        {"kv.KVService.Get", GRPC_REFLECT_METHOD},
        {"kv.KVService.Delete", GRPC_REFLECT_METHOD},
        {"kv.SetRequest", GRPC_REFLECT_MESSAGE},
        {"pyazdb.Cluster.Status", GRPC_REFLECT_METHOD},
        {"pyazdb.Member", GRPC_REFLECT_MESSAGE},
        {"grpc.health.v1.Health", GRPC_REFLECT_SERVICE},
        {"grpc.health.v1.HealthCheckResponse.ServingStatus", GRPC_REFLECT_ENUM},
        {"grpc.reflection.v1.ServerReflection.ServerReflectionInfo",
         GRPC_REFLECT_METHOD},
        {"grpc.reflection.v1alpha.ServerReflection", GRPC_REFLECT_SERVICE},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(want); i++) {
        const struct grpc_reflect_symbol *s =
            grpc_reflect_find(&r, want[i].name);
        if (s == NULL)
            fprintf(stderr, "    missing %s\n", want[i].name);
        CHECK(s != NULL);
        CHECK_EQ_INT(s->kind, want[i].kind);
    }
    CHECK(grpc_reflect_find(&r, "kv.KVService.Nope") == NULL);
    CHECK(grpc_reflect_find(&r, "KVService") == NULL);
    grpc_reflect_free(&r);
}

TEST(list_services)
{
    struct grpc_reflect r;
    CHECK_EQ_INT(init(&r), 0);
    req_t q = REQ_INIT;
    q.host = "localhost";
    q.message_request_case = REQ_CASE(LIST_SERVICES);
    q.list_services = "*";
    resp_t *a = ask(&r, &q);
    CHECK(a != NULL);
    CHECK_EQ_STR(a->valid_host, "localhost");
    CHECK(a->original_request != NULL);
    CHECK_EQ_STR(a->original_request->list_services, "*");
    CHECK_EQ_INT(a->message_response_case, RESP_CASE(LIST_SERVICES_RESPONSE));
    Grpc__Reflection__V1__ListServiceResponse *l = a->list_services_response;
    CHECK_EQ_INT(l->n_service, 11);
    CHECK_EQ_STR(l->service[0]->name, "etcdserverpb.Auth");
    CHECK_EQ_STR(l->service[1]->name, "etcdserverpb.Cluster");
    CHECK_EQ_STR(l->service[2]->name, "etcdserverpb.KV");
    CHECK_EQ_STR(l->service[3]->name, "etcdserverpb.Lease");
    CHECK_EQ_STR(l->service[4]->name, "etcdserverpb.Maintenance");
    CHECK_EQ_STR(l->service[5]->name, "etcdserverpb.Watch");
    CHECK_EQ_STR(l->service[6]->name, "grpc.health.v1.Health");
    CHECK_EQ_STR(l->service[7]->name, "grpc.reflection.v1.ServerReflection");
    CHECK_EQ_STR(l->service[8]->name,
                 "grpc.reflection.v1alpha.ServerReflection");
    CHECK_EQ_STR(l->service[9]->name, "kv.KVService");
    CHECK_EQ_STR(l->service[10]->name, "pyazdb.Cluster");
    free_resp(a);
    grpc_reflect_free(&r);
}

TEST(file_requests)
{
    struct grpc_reflect r;
    CHECK_EQ_INT(init(&r), 0);
    req_t q = REQ_INIT;
    static const struct {
        int kind;
        const char *arg;
        const char *file;
    } cases[] = {
        {REQ_CASE(FILE_CONTAINING_SYMBOL), "kv.KVService", "kv.proto"},
        {REQ_CASE(FILE_CONTAINING_SYMBOL), "kv.KVService.Set", "kv.proto"},
        {REQ_CASE(FILE_CONTAINING_SYMBOL), "kv.GetResponse", "kv.proto"},
        {REQ_CASE(FILE_CONTAINING_SYMBOL), "pyazdb.StatusResponse",
         "cluster.proto"},
        {REQ_CASE(FILE_CONTAINING_SYMBOL),
         "grpc.health.v1.HealthCheckResponse.ServingStatus",
         "grpc/health/v1/health.proto"},
        {REQ_CASE(FILE_BY_FILENAME), "grpc/reflection/v1alpha/reflection.proto",
         "grpc/reflection/v1alpha/reflection.proto"},
        {REQ_CASE(FILE_BY_FILENAME), "kv.proto", "kv.proto"},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(cases); i++) {
        q.message_request_case = cases[i].kind;
        q.file_containing_symbol = (char *)cases[i].arg; /* union */
        resp_t *a = ask(&r, &q);
        CHECK(a != NULL);
        CHECK_EQ_INT(a->message_response_case,
                     RESP_CASE(FILE_DESCRIPTOR_RESPONSE));
        CHECK_EQ_INT(a->file_descriptor_response->n_file_descriptor_proto, 1);
        char *name =
            fd_name(&a->file_descriptor_response->file_descriptor_proto[0]);
        CHECK_EQ_STR(name, cases[i].file);
        pz_free(name);
        free_resp(a);
    }
    grpc_reflect_free(&r);
}

TEST(not_found_and_extensions)
{
    struct grpc_reflect r;
    CHECK_EQ_INT(init(&r), 0);
    req_t q = REQ_INIT;
    q.message_request_case = REQ_CASE(FILE_CONTAINING_SYMBOL);
    q.file_containing_symbol = "kv.Nope";
    resp_t *a = ask(&r, &q);
    CHECK(a != NULL);
    CHECK_EQ_INT(a->message_response_case, RESP_CASE(ERROR_RESPONSE));
    CHECK_EQ_INT(a->error_response->error_code, GRPC_NOT_FOUND);
    CHECK_EQ_STR(a->error_response->error_message, "symbol not found: kv.Nope");
    free_resp(a);

    q.message_request_case = REQ_CASE(FILE_BY_FILENAME);
    q.file_by_filename = "nope.proto";
    a = ask(&r, &q);
    CHECK(a != NULL);
    CHECK_EQ_INT(a->error_response->error_code, GRPC_NOT_FOUND);
    free_resp(a);

    q.message_request_case = REQ_CASE(ALL_EXTENSION_NUMBERS_OF_TYPE);
    q.all_extension_numbers_of_type = "kv.GetRequest";
    a = ask(&r, &q);
    CHECK(a != NULL);
    CHECK_EQ_INT(a->message_response_case,
                 RESP_CASE(ALL_EXTENSION_NUMBERS_RESPONSE));
    CHECK_EQ_STR(a->all_extension_numbers_response->base_type_name,
                 "kv.GetRequest");
    CHECK_EQ_INT(a->all_extension_numbers_response->n_extension_number, 0);
    free_resp(a);

    Grpc__Reflection__V1__ExtensionRequest ext =
        GRPC__REFLECTION__V1__EXTENSION_REQUEST__INIT;
    ext.containing_type = "kv.GetRequest";
    ext.extension_number = 100;
    q.message_request_case = REQ_CASE(FILE_CONTAINING_EXTENSION);
    q.file_containing_extension = &ext;
    a = ask(&r, &q);
    CHECK(a != NULL);
    CHECK_EQ_INT(a->error_response->error_code, GRPC_NOT_FOUND);
    free_resp(a);

    /* No request at all inside the message. */
    q.message_request_case = REQ_CASE(_NOT_SET);
    a = ask(&r, &q);
    CHECK(a != NULL);
    CHECK_EQ_INT(a->error_response->error_code, GRPC_INVALID_ARGUMENT);
    free_resp(a);

    /* Bytes that are not a request. */
    struct pz_buf out;
    pz_buf_init(&out);
    static const uint8_t junk[] = {0x0a, 0x05, 'a'};
    CHECK_EQ_INT(grpc_reflect_answer(&r, junk, sizeof junk, &out), PZ_EINVAL);
    CHECK_EQ_INT(out.len, 0);
    /* A request with an unknown field (number 0, which protobuf-c keeps as
     * one) is answered with an echo of its known fields only: the answer
     * parses (it once did not). */
    static const uint8_t field0[] = {0x82, 0x00, 0x00};
    CHECK_EQ_INT(grpc_reflect_answer(&r, field0, sizeof field0, &out), 0);
    resp_t *e = grpc__reflection__v1__server_reflection_response__unpack(
        &grpc_pb_allocator, out.len, (uint8_t *)out.data);
    CHECK(e != NULL);
    free_resp(e);
    /* The same inside the one nested request, file_containing_extension:
     * its field 0 was echoed into an answer no parser took. */
    static const uint8_t nested0[] = {0x2a, 0x05, 0x10, 0x07,
                                      0x80, 0x00, 0x00};
    out.len = 0;
    CHECK_EQ_INT(grpc_reflect_answer(&r, nested0, sizeof nested0, &out), 0);
    e = grpc__reflection__v1__server_reflection_response__unpack(
        &grpc_pb_allocator, out.len, (uint8_t *)out.data);
    CHECK(e != NULL);
    if (e) {
        CHECK_EQ_INT(e->error_response->error_code, GRPC_NOT_FOUND);
        CHECK_EQ_INT(e->original_request->file_containing_extension
                         ->extension_number,
                     7);
        free_resp(e);
    }
    pz_buf_free(&out);
    grpc_reflect_free(&r);
}

TEST(malformed_set)
{
    struct grpc_reflect r;
    static const uint8_t bad[] = {0x0a, 0x03, 0x0a, 0x05, 'x'};
    CHECK_EQ_INT(grpc_reflect_init(&r, bad, sizeof bad), PZ_EINVAL);
    CHECK_EQ_INT(r.n_files, 0);
    CHECK(grpc_reflect_find(&r, "kv.KVService") == NULL);
    grpc_reflect_free(&r);
    /* A truncated copy of the real set fails cleanly too. */
    CHECK_EQ_INT(
        grpc_reflect_init(&r, grpc_descriptor_set, grpc_descriptor_set_len - 3),
        PZ_EINVAL);
    grpc_reflect_free(&r);
}

static const struct test_case cases[] = {
    TEST_ENTRY(index),         TEST_ENTRY(list_services),
    TEST_ENTRY(file_requests), TEST_ENTRY(not_found_and_extensions),
    TEST_ENTRY(malformed_set), TEST_END,
};

const struct test_suite suite_grpc_reflect = {"grpc_reflect", cases};
