/* test_auth.c - the decisions of auth.c: loading the token file (start
 * and reload), HTTP requests decoded as the node decodes them, kv and
 * etcd gRPC calls with their request messages, and the admin rule. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "config.h"
#include "etcd.h"
#include "grpc_pb.h"
#include "http_parse.h"
#include "log.h"
#include "test.h"

#define APP "app-token-0123456789"
#define RO "ro-token-0123456789x"
#define ADMIN "admin-token-0123456"

static char path[64];

/* Load text as the token file with the given cluster token. */
static int load(const char *text, const char *cluster_token, bool reload,
                char *err, size_t errlen)
{
    snprintf(path, sizeof path, "/tmp/pz-test-auth-%d", (int)getpid());
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    fputs(text, f);
    fclose(f);
    struct pz_config c;
    cfg_init(&c);
    pz_free(c.client_token_file);
    c.client_token_file = pz_strdup(path);
    pz_free(c.cluster_token);
    c.cluster_token = pz_strdup(cluster_token);
    int rv = auth_load(&c, reload, err, errlen);
    cfg_free(&c);
    return rv;
}

static const char *const TOKENS = "app rw " APP " app/\n"
                                  "ro ro " RO "\n"
                                  "admin rw " ADMIN "\n";

/* Decode one raw HTTP request and ask auth_http. */
static int http(const char *raw, char *why, size_t whylen)
{
    struct http_limits lim = {.max_header_bytes = 8192, .max_headers = 50,
                              .max_body = 1 << 20};
    struct http_api_limits al = {.max_key = 1024, .max_value = 1 << 16};
    struct http_parser p;
    size_t used;
    http_parser_init(&p, &lim);
    int rv = -1;
    if (http_parser_feed(&p, raw, strlen(raw), &used) == HTTP_PARSE_REQUEST) {
        struct http_op op;
        memset(&op, 0, sizeof op);
        http_api_decode(&p.req, &al, &op);
        rv = auth_http(&p.req, &op, why, whylen);
        http_op_free(&op);
    }
    http_parser_free(&p);
    return rv;
}

#define GET(path, tok)                                                       \
    "GET " path " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " tok         \
    "\r\n\r\n"

/* auth_http_sees_all for one raw request. */
static bool sees_all(const char *raw)
{
    struct http_limits lim = {
        .max_header_bytes = 8192, .max_headers = 50, .max_body = 1 << 20};
    struct http_parser p;
    size_t used;
    http_parser_init(&p, &lim);
    bool yes =
        http_parser_feed(&p, raw, strlen(raw), &used) == HTTP_PARSE_REQUEST &&
        auth_http_sees_all(&p.req);
    http_parser_free(&p);
    return yes;
}

/* A POST of body with token tok, decoded and asked. */
static int post(const char *target, const char *tok, const char *body,
                char *why, size_t whylen)
{
    char raw[1024];
    snprintf(raw, sizeof raw,
             "POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
             "Content-Length: %zu\r\n\r\n%s",
             target, tok, strlen(body), body);
    return http(raw, why, whylen);
}

TEST(load_and_reload)
{
    char err[512] = "";
    pz_log_setup(PZ_LOG_ERROR, NULL);
    CHECK_EQ_INT(load("a rw short\n", "", false, err, sizeof err),
                 PZ_ECONFIG);
    CHECK(strstr(err, ":1: a token is 16 to 256 characters") != NULL);
    CHECK(!auth_on());
    CHECK_EQ_INT(load(TOKENS, "", false, err, sizeof err), 0);
    CHECK(auth_on());
    /* a bad file on reload: refused, the tokens in force stay */
    CHECK_EQ_INT(load("x rx " APP "\n", "", true, err, sizeof err),
                 PZ_ECONFIG);
    char why[256];
    CHECK_EQ_INT(http(GET("/get?key=app/x", APP), why, sizeof why), AUTH_OK);
    /* a good one replaces them */
    CHECK_EQ_INT(load("ro ro " RO "\n", "", true, err, sizeof err), 0);
    CHECK_EQ_INT(http(GET("/get?key=app/x", APP), why, sizeof why),
                 AUTH_UNAUTHENTICATED);
    CHECK_EQ_STR(why, "Unknown bearer token");
    auth_free();
    unlink(path);
}

TEST(http_routes)
{
    char err[512], why[256];
    pz_log_setup(PZ_LOG_ERROR, NULL);
    CHECK_EQ_INT(load(TOKENS, "cluster-secret", false, err, sizeof err), 0);
    CHECK_EQ_INT(http("GET /health HTTP/1.1\r\n\r\n", why, sizeof why),
                 AUTH_OK);
    CHECK_EQ_INT(http("GET /metrics HTTP/1.1\r\n\r\n", why, sizeof why),
                 AUTH_OK);
    CHECK_EQ_INT(http("GET /get?key=app/x HTTP/1.1\r\n\r\n", why,
                      sizeof why),
                 AUTH_UNAUTHENTICATED);
    CHECK(strstr(why, "Missing bearer token") != NULL);
    CHECK_EQ_INT(http(GET("/get?key=other", APP), why, sizeof why),
                 AUTH_DENIED);
    CHECK_EQ_STR(why, "Token 'app' may not touch this key (outside its "
                      "prefixes)");
    CHECK_EQ_INT(post("/set", RO, "{\"key\":\"a\",\"value\":\"b\"}", why,
                      sizeof why),
                 AUTH_DENIED);
    CHECK_EQ_STR(why, "Token 'ro' is read-only");
    CHECK_EQ_INT(http(GET("/range?prefix=app/", APP), why, sizeof why),
                 AUTH_OK);
    CHECK_EQ_INT(http(GET("/range?prefix=ap", APP), why, sizeof why),
                 AUTH_DENIED);
    CHECK_EQ_INT(http(GET("/watch?prefix=app/", APP), why, sizeof why),
                 AUTH_OK);
    CHECK_EQ_INT(http(GET("/watch?from=app/", APP), why, sizeof why),
                 AUTH_DENIED);
    /* a transaction: every op */
    const char *txn = "{\"success\":[{\"put\":{\"key\":\"app/a\",\"value\":"
                      "\"1\"}},{\"get\":{\"key\":\"zz\"}}]}";
    CHECK_EQ_INT(post("/txn", APP, txn, why, sizeof why), AUTH_DENIED);
    /* a delete_range is a range: it starts inside app/ and must end by
     * its end */
    CHECK_EQ_INT(post("/txn", APP,
                      "{\"success\":[{\"delete_range\":{\"prefix\":"
                      "\"app/\"}}]}",
                      why, sizeof why),
                 AUTH_OK);
    CHECK_EQ_INT(post("/txn", APP,
                      "{\"success\":[{\"delete_range\":{\"from\":"
                      "\"app/a\",\"to\":\"zz\"}}]}",
                      why, sizeof why),
                 AUTH_DENIED);
    CHECK_EQ_STR(why, "Token 'app' may not touch this range (outside its "
                      "prefixes)");
    /* admin: the cluster token, or rw without prefixes */
    CHECK_EQ_INT(post("/admin/snapshot", APP, "", why, sizeof why),
                 AUTH_DENIED);
    CHECK_EQ_INT(post("/admin/snapshot", ADMIN, "", why, sizeof why),
                 AUTH_OK);
    CHECK_EQ_INT(post("/admin/snapshot", "cluster-secret", "", why,
                      sizeof why),
                 AUTH_OK);
    CHECK_EQ_INT(http(GET("/get?key=app/x", "cluster-secret"), why,
                      sizeof why),
                 AUTH_UNAUTHENTICATED);
    /* the digest in /status: the cluster token, or a token without
     * prefixes */
    CHECK(sees_all(GET("/status", ADMIN)));
    CHECK(sees_all(GET("/status", RO)));
    CHECK(sees_all(GET("/status", "cluster-secret")));
    CHECK(!sees_all(GET("/status", APP)));
    CHECK(!sees_all(GET("/status", "unknown-token-0123")));
    CHECK(!sees_all("GET /status HTTP/1.1\r\n\r\n"));
    /* a forwarded mark proves nothing */
    CHECK_EQ_INT(http("GET /get?key=app/x HTTP/1.1\r\nX-Pyazdb-Forwarded: "
                      "1\r\n\r\n",
                      why, sizeof why),
                 AUTH_UNAUTHENTICATED);
    auth_free();
    unlink(path);
}

/* Pack m into a static buffer. */
static size_t pack(const ProtobufCMessage *m, uint8_t *buf)
{
    return protobuf_c_message_pack(m, buf);
}

TEST(etcd_calls)
{
    char err[512], why[256];
    static uint8_t buf[4096];
    pz_log_setup(PZ_LOG_ERROR, NULL);
    CHECK_EQ_INT(load(TOKENS, "", false, err, sizeof err), 0);
    const char *app = APP, *admin = ADMIN;
    Etcdserverpb__RangeRequest r = ETCDSERVERPB__RANGE_REQUEST__INIT;
    r.key = (ProtobufCBinaryData){5, (uint8_t *)"app/x"};
    size_t n = pack(&r.base, buf);
    CHECK_EQ_INT(auth_grpc_etcd(NULL, ETCD_RANGE, buf, n, why, sizeof why),
                 AUTH_UNAUTHENTICATED);
    CHECK_EQ_INT(auth_grpc_etcd(app, ETCD_RANGE, buf, n, why, sizeof why),
                 AUTH_OK);
    r.key = (ProtobufCBinaryData){4, (uint8_t *)"app/"};
    r.range_end = (ProtobufCBinaryData){4, (uint8_t *)"app0"};
    n = pack(&r.base, buf);
    CHECK_EQ_INT(auth_grpc_etcd(app, ETCD_RANGE, buf, n, why, sizeof why),
                 AUTH_OK);
    r.range_end = (ProtobufCBinaryData){1, (uint8_t *)"\0"};
    n = pack(&r.base, buf);
    CHECK_EQ_INT(auth_grpc_etcd(app, ETCD_RANGE, buf, n, why, sizeof why),
                 AUTH_DENIED);
    /* a nested transaction's put outside the prefix */
    Etcdserverpb__PutRequest put = ETCDSERVERPB__PUT_REQUEST__INIT;
    put.key = (ProtobufCBinaryData){1, (uint8_t *)"z"};
    Etcdserverpb__RequestOp op = ETCDSERVERPB__REQUEST_OP__INIT;
    op.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
    op.request_put = &put;
    Etcdserverpb__RequestOp *ops[] = {&op};
    Etcdserverpb__TxnRequest inner = ETCDSERVERPB__TXN_REQUEST__INIT;
    inner.n_failure = 1;
    inner.failure = ops;
    Etcdserverpb__RequestOp nested = ETCDSERVERPB__REQUEST_OP__INIT;
    nested.request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_TXN;
    nested.request_txn = &inner;
    Etcdserverpb__RequestOp *outer_ops[] = {&nested};
    Etcdserverpb__TxnRequest outer = ETCDSERVERPB__TXN_REQUEST__INIT;
    outer.n_success = 1;
    outer.success = outer_ops;
    n = pack(&outer.base, buf);
    CHECK_EQ_INT(auth_grpc_etcd(app, ETCD_TXN, buf, n, why, sizeof why),
                 AUTH_DENIED);
    CHECK_EQ_INT(auth_grpc_etcd(admin, ETCD_TXN, buf, n, why, sizeof why),
                 AUTH_OK);
    /* admin calls */
    CHECK_EQ_INT(auth_grpc_etcd(app, ETCD_COMPACT, NULL, 0, why, sizeof why),
                 AUTH_DENIED);
    CHECK_EQ_INT(auth_grpc_etcd(admin, ETCD_MEMBER_REMOVE, NULL, 0, why,
                                sizeof why),
                 AUTH_OK);
    CHECK_EQ_INT(auth_grpc_etcd(RO, ETCD_HASHKV, NULL, 0, why,
                                sizeof why),
                 AUTH_OK);
    CHECK_EQ_INT(auth_grpc_etcd(app, ETCD_HASHKV, NULL, 0, why, sizeof why),
                 AUTH_DENIED);
    /* kv.KVService */
    CHECK_EQ_INT(auth_grpc_key(RO, true, (const uint8_t *)"a", 1,
                               why, sizeof why),
                 AUTH_DENIED);
    CHECK_EQ_INT(auth_grpc_key(app, true, (const uint8_t *)"app/a", 5, why,
                               sizeof why),
                 AUTH_OK);
    /* leases and watches: an rw token without prefixes, over gRPC as over
     * the JSON gateway */
    static const int lw[] = {ETCD_LEASE_GRANT,     ETCD_LEASE_REVOKE,
                             ETCD_LEASE_TTL,       ETCD_LEASE_LEASES,
                             ETCD_LEASE_KEEPALIVE, ETCD_WATCH};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(lw); i++) {
        CHECK_EQ_INT(auth_grpc_etcd(ADMIN, lw[i], NULL, 0, why, sizeof why),
                     AUTH_OK);
        CHECK_EQ_INT(auth_grpc_etcd(APP, lw[i], NULL, 0, why, sizeof why),
                     AUTH_DENIED);
        CHECK_EQ_INT(auth_grpc_etcd(RO, lw[i], NULL, 0, why, sizeof why),
                     AUTH_DENIED);
        CHECK_EQ_INT(auth_grpc_etcd(NULL, lw[i], NULL, 0, why, sizeof why),
                     AUTH_UNAUTHENTICATED);
    }
    /* etcd user names */
    CHECK(auth_user_ok("app", APP));
    CHECK(!auth_user_ok("ro", APP));
    CHECK_EQ_INT(auth_grpc_etcd(NULL, ETCD_AUTHENTICATE, NULL, 0, why,
                                sizeof why),
                 AUTH_OK);
    auth_free();
    CHECK_EQ_INT(auth_grpc_etcd(NULL, ETCD_WATCH, NULL, 0, why, sizeof why),
                 AUTH_OK);
    /* without a token file: open as before */
    CHECK_EQ_INT(auth_grpc_key(NULL, true, (const uint8_t *)"a", 1, why,
                               sizeof why),
                 AUTH_OK);
    CHECK_EQ_INT(auth_grpc_etcd(NULL, ETCD_COMPACT, NULL, 0, why, sizeof why),
                 AUTH_OK);
    unlink(path);
}

static const struct test_case cases[] = {
    TEST_ENTRY(load_and_reload),
    TEST_ENTRY(http_routes),
    TEST_ENTRY(etcd_calls),
    TEST_END,
};

const struct test_suite suite_auth = {"auth", cases};
