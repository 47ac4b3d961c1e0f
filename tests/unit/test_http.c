/* test_http.c - HTTP request parsing and the API's request rules, fed
 * whole, pipelined and one byte at a time, with no socket. */
#include <stdlib.h>

#include "http_parse.h"
#include "kv.h"
#include "test.h"

static const struct http_limits lim = {8192, 50, 4096};
static const struct http_api_limits api = {16, 64};

/* Feed `in` in pieces of `step` bytes (0 = all at once); decode every
 * complete request into ops[]. Returns the number of requests, or -status
 * on a parse error. */
static int run(const char *in, size_t len, size_t step, struct http_op *ops,
               int max, bool *keep_alive)
{
    struct http_parser p;
    struct pz_buf pending;
    int n = 0, result = 0;
    http_parser_init(&p, &lim);
    pz_buf_init(&pending);
    size_t off = 0;
    while (off < len || pending.len) {
        size_t take = step ? PZ_MIN(step, len - off) : len - off;
        pz_buf_append(&pending, in + off, take);
        off += take;
        for (;;) {
            size_t used;
            int r = http_parser_feed(&p, pending.data, pending.len, &used);
            pz_buf_consume(&pending, used);
            if (r == HTTP_PARSE_NEED_MORE)
                break;
            if (r == HTTP_PARSE_ERROR) {
                result = -p.err_status;
                goto out;
            }
            if (n < max) {
                http_api_decode(&p.req, &api, &ops[n]);
                if (keep_alive)
                    keep_alive[n] = p.req.keep_alive;
            }
            n++;
            http_parser_next(&p);
        }
        if (off >= len)
            break;
    }
    result = n;
out:
    http_parser_free(&p);
    pz_buf_free(&pending);
    return result;
}

static const char pipelined[] =
    "GET /get?key=a%20b HTTP/1.1\r\nHost: x\r\n\r\n"
    "POST /set HTTP/1.1\r\nContent-Length: 30\r\n\r\n"
    "{\"key\":\"k\",\"value\":\"v\\u0000w\"}"
    "DELETE /delete?key=k HTTP/1.1\r\n\r\n"
    "POST /delete HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    "5\r\n{\"key\r\n7\r\n\":\"zz\"}\r\n0\r\n\r\n"
    "GET /health HTTP/1.1\r\nConnection: close\r\n\r\n";

static int check_pipelined(size_t step)
{
    struct http_op ops[8];
    bool ka[8];
    int n = run(pipelined, sizeof pipelined - 1, step, ops, 8, ka);
    int bad = 0;
    if (n != 5)
        return 100 + n;
    bad |= ops[0].kind != HTTP_OP_GET || ops[0].klen != 3 ||
           memcmp(ops[0].key, "a b", 3) != 0 || !ka[0];
    bad |= (ops[1].kind != HTTP_OP_SET || ops[1].vlen != 3 ||
            memcmp(ops[1].value, "v\0w", 3) != 0) << 1;
    bad |= (ops[2].kind != HTTP_OP_DEL || ops[2].klen != 1) << 2;
    bad |= (ops[3].kind != HTTP_OP_DEL || ops[3].klen != 2 ||
            memcmp(ops[3].key, "zz", 2) != 0) << 3;
    bad |= (ops[4].kind != HTTP_OP_HEALTH || ka[4]) << 4;
    for (int i = 0; i < n; i++)
        http_op_free(&ops[i]);
    return bad;
}

TEST(pipelined_whole)
{
    CHECK_EQ_INT(check_pipelined(0), 0);
}

TEST(pipelined_byte_by_byte)
{
    CHECK_EQ_INT(check_pipelined(1), 0);
}

TEST(pipelined_odd_chunks)
{
    for (size_t step = 2; step < 40; step += 3)
        CHECK_EQ_INT(check_pipelined(step), 0);
}

static struct http_op one(const char *req)
{
    struct http_op op;
    memset(&op, 0, sizeof op);
    int n = run(req, strlen(req), 0, &op, 1, NULL);
    if (n < 0) {
        op.kind = HTTP_OP_ERROR;
        op.status = -n;
        op.reason = "parse error";
    }
    return op;
}

static int status_of(const char *req)
{
    struct http_op op = one(req);
    int st = op.kind == HTTP_OP_ERROR ? op.status : 0;
    http_op_free(&op);
    return st;
}

static const char *reason_of(const char *req)
{
    struct http_op op = one(req);
    const char *r = op.kind == HTTP_OP_ERROR ? op.reason : "";
    http_op_free(&op);
    return r;
}

TEST(health_serializable)
{
    static const struct {
        const char *req;
        int kind;
        bool serializable;
    } cases[] = {
        {"GET /health HTTP/1.1\r\n\r\n", HTTP_OP_HEALTH, false},
        {"GET /health?serializable=true HTTP/1.1\r\n\r\n", HTTP_OP_HEALTH,
         true},
        {"GET /health?serializable=1 HTTP/1.1\r\n\r\n", HTTP_OP_HEALTH, true},
        {"GET /health?serializable=false HTTP/1.1\r\n\r\n", HTTP_OP_HEALTH,
         false},
        {"GET /health?x=1&serializable=0 HTTP/1.1\r\n\r\n", HTTP_OP_HEALTH,
         false},
        {"GET /health?serializable=yes HTTP/1.1\r\n\r\n", HTTP_OP_ERROR,
         false},
        {"GET /health?serializable= HTTP/1.1\r\n\r\n", HTTP_OP_ERROR, false},
        {"GET /status?serializable=true HTTP/1.1\r\n\r\n", HTTP_OP_STATUS,
         false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct http_op op = one(cases[i].req);
        CHECK_EQ_INT(op.kind, cases[i].kind);
        CHECK_EQ_INT(op.serializable, cases[i].serializable);
        if (op.kind == HTTP_OP_ERROR) {
            CHECK_EQ_INT(op.status, 400);
            CHECK_EQ_STR(op.reason, "serializable must be true or false");
        }
        http_op_free(&op);
    }
}

#define POST(path, body)                                                     \
    "POST " path " HTTP/1.1\r\nContent-Length: " #body "\r\n\r\n"

TEST(api_errors)
{
    CHECK_EQ_INT(status_of("GET /nope HTTP/1.1\r\n\r\n"), 404);
    CHECK_EQ_INT(status_of("POST /get?key=a HTTP/1.1\r\n\r\n"), 405);
    CHECK_EQ_STR(reason_of("GET /get HTTP/1.1\r\n\r\n"),
                 "Missing key parameter");
    CHECK_EQ_STR(reason_of("GET /get?key= HTTP/1.1\r\n\r\n"),
                 "Missing key parameter");
    CHECK_EQ_INT(status_of("GET /get?key=%zz HTTP/1.1\r\n\r\n"), 400);
    CHECK_EQ_INT(status_of("GET /get?key=a&consistency=maybe HTTP/1.1\r\n\r\n"),
                 400);
    CHECK_EQ_STR(reason_of("POST /set HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
                           "{\"ke"
                           "y"),
                 "Invalid JSON");
    CHECK_EQ_STR(reason_of("POST /set HTTP/1.1\r\nContent-Length: 13\r\n\r\n"
                           "{\"value\":\"v\"}"),
                 "Missing key field");
    CHECK_EQ_STR(reason_of("POST /set HTTP/1.1\r\nContent-Length: 21\r\n\r\n"
                           "{\"key\":\"k\",\"value\":1}"),
                 "Invalid JSON");
    CHECK_EQ_STR(reason_of("POST /set HTTP/1.1\r\nContent-Length: 2\r\n\r\n"
                           "[]"),
                 "Invalid JSON");
    CHECK_EQ_STR(reason_of("POST /set HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
                 "Invalid JSON");
    /* limits of the API: key 16, value 64 */
    CHECK_EQ_INT(status_of("GET /get?key=0123456789abcdefg HTTP/1.1\r\n\r\n"),
                 413);
    CHECK_EQ_INT(status_of("PUT /delete?key=a HTTP/1.1\r\n\r\n"), 405);
    struct http_op op = one("PUT /delete?key=a HTTP/1.1\r\n\r\n");
    CHECK_EQ_STR(op.allow, "POST, DELETE");
    http_op_free(&op);
}

TEST(api_json_forms)
{
    struct http_op op =
        one("POST /set HTTP/1.1\r\nContent-Length: 59\r\n\r\n"
            "{\"extra\":{\"a\":[1,2,{\"b\":null}]},\"key\":\"\\u00e9\\ud83d\\ude00\"}");
    CHECK_EQ_INT(op.kind, HTTP_OP_SET);
    CHECK_EQ_INT(op.klen, 6);
    CHECK(memcmp(op.key, "\xc3\xa9\xf0\x9f\x98\x80", 6) == 0);
    CHECK_EQ_INT(op.vlen, 0); /* absent value is the empty string */
    http_op_free(&op);
    /* lone surrogate, bad escape, trailing garbage, control character */
    CHECK_EQ_INT(status_of(POST("/set", 16) "{\"key\":\"\\ud800\"}"), 400);
    CHECK_EQ_INT(status_of(POST("/set", 13) "{\"key\":\"\\q\"} "), 400);
    CHECK_EQ_INT(status_of(POST("/set", 13) "{\"key\":\"a\"} x"), 400);
    CHECK_EQ_INT(status_of(POST("/set", 11) "{\"key\":\"\x01\"}"), 400);
}

TEST(range_requests)
{
    struct http_op op = one("GET /range?prefix=ab HTTP/1.1\r\n\r\n");
    CHECK_EQ_INT(op.kind, HTTP_OP_RANGE);
    CHECK(op.klen == 2 && memcmp(op.key, "ab", 2) == 0);
    CHECK(op.elen == 2 && memcmp(op.end, "ac", 2) == 0 && !op.to_end);
    CHECK(op.limit == HTTP_RANGE_LIMIT && !op.stale && !op.keys_only);
    http_op_free(&op);
    /* a prefix of 0xff bytes runs to the end; from moves the start */
    op = one("GET /range?prefix=a%FF&from=a%FF%00&keys_only=1&limit=7 "
             "HTTP/1.1\r\n\r\n");
    CHECK_EQ_INT(op.kind, HTTP_OP_RANGE);
    CHECK(op.elen == 1 && op.end[0] == 'b');
    CHECK(op.klen == 3 && memcmp(op.key, "a\xff\0", 3) == 0);
    CHECK(op.keys_only && op.limit == 7);
    http_op_free(&op);
    op = one("GET /range?prefix=%FF%FF&count_only=true&consistency=stale "
             "HTTP/1.1\r\n\r\n");
    CHECK(op.kind == HTTP_OP_RANGE && op.to_end && op.count_only && op.stale);
    http_op_free(&op);
    op = one("GET /range?from=&to=m HTTP/1.1\r\n\r\n");
    CHECK(op.kind == HTTP_OP_RANGE && op.klen == 0 && op.elen == 1);
    http_op_free(&op);
    CHECK_EQ_STR(reason_of("GET /range HTTP/1.1\r\n\r\n"),
                 "Missing prefix or from parameter");
    CHECK_EQ_STR(reason_of("GET /range?prefix=a&from=b HTTP/1.1\r\n\r\n"),
                 "from must lie inside the prefix");
    /* a from that is only the start of the prefix lies before it */
    CHECK_EQ_STR(reason_of("GET /range?prefix=app/&from=ap HTTP/1.1\r\n\r\n"),
                 "from must lie inside the prefix");
    CHECK_EQ_STR(reason_of("GET /range?prefix=a&limit=-1 HTTP/1.1\r\n\r\n"),
                 "limit must be an integer from 1 to 10000");
    CHECK_EQ_STR(reason_of("GET /range?prefix=a&limit=1x HTTP/1.1\r\n\r\n"),
                 "limit must be an integer from 1 to 10000");
    CHECK_EQ_STR(reason_of("GET /range?prefix=a&limit=0 HTTP/1.1\r\n\r\n"),
                 "limit must be an integer from 1 to 10000");
    CHECK_EQ_INT(status_of("DELETE /range?prefix=a HTTP/1.1\r\n\r\n"), 405);
}

/* The command http_api_decode built, decoded again. */
static bool txn_of(const struct http_op *op, struct kv_cmd *c,
                   struct kv_cmp *cmps, struct kv_op *succ, struct kv_op *fail)
{
    if (op->kind != HTTP_OP_TXN ||
        kv_decode((const uint8_t *)op->cmd.data, op->cmd.len, c) != 0 ||
        c->op != KV_OP_TXN || c->ncmp > 4 || c->nsucc > 4 || c->nfail > 4)
        return false;
    kv_txn_items(c, cmps, succ, fail);
    return true;
}

/* A POST of body to path, Content-Length counted (one buffer, reused). */
static const char *req_of(const char *path, const char *body)
{
    static char buf[2048];
    snprintf(buf, sizeof buf,
             "POST %s HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s", path,
             strlen(body), body);
    return buf;
}

TEST(conditional_writes)
{
    struct kv_cmd c;
    struct kv_cmp cm[4];
    struct kv_op s[4], f[4];
    struct http_op op = one(req_of("/set", "{\"key\":\"k\",\"value\":\"v\","
                                           "\"prev_revision\":7}"));
    CHECK(txn_of(&op, &c, cm, s, f));
    CHECK_EQ_INT(op.txn_kind, HTTP_TXN_SET);
    CHECK(c.ncmp == 1 && cm[0].target == KV_CMP_MOD && cm[0].num == 7 &&
          cm[0].result == KV_CMP_EQ);
    CHECK(c.nsucc == 1 && s[0].type == KV_TOP_PUT && s[0].vlen == 1);
    CHECK(c.nfail == 1 && f[0].type == KV_TOP_GET && f[0].klen == 1);
    http_op_free(&op);
    op = one(req_of("/delete", "{\"key\":\"k\",\"prev_revision\":0,"
                               "\"prev_value\":\"x\"}"));
    CHECK(txn_of(&op, &c, cm, s, f));
    CHECK_EQ_INT(op.txn_kind, HTTP_TXN_DEL);
    CHECK(c.ncmp == 2 && cm[0].target == KV_CMP_CREATE && cm[0].num == 0 &&
          cm[1].target == KV_CMP_VALUE && cm[1].vlen == 1);
    CHECK(s[0].type == KV_TOP_DEL);
    http_op_free(&op);
    op = one(req_of("/delete", "{\"prefix_b64\":\"YWI=\"}"));
    CHECK(txn_of(&op, &c, cm, s, f));
    CHECK_EQ_INT(op.txn_kind, HTTP_TXN_DELPREFIX);
    CHECK(c.ncmp == 0 && c.nsucc == 1 && s[0].type == KV_TOP_DELRANGE &&
          s[0].klen == 2 && memcmp(s[0].key, "ab", 2) == 0 && s[0].vlen == 2 &&
          memcmp(s[0].value, "ac", 2) == 0);
    http_op_free(&op);
    /* a plain set is still a plain set */
    op = one(req_of("/set", "{\"key\":\"k\",\"value\":\"v\"}"));
    CHECK_EQ_INT(op.kind, HTTP_OP_SET);
    http_op_free(&op);
    /* ...also with members that only look like conditions (nested, or
     * another name), while a condition is one wherever it stands and
     * however its name is escaped */
    op = one(req_of("/set", "{\"x\":{\"prev_revision\":1},\"key\":\"k\","
                            "\"prev_rev\":1,\"value\":\"v\"}"));
    CHECK_EQ_INT(op.kind, HTTP_OP_SET);
    http_op_free(&op);
    op = one(req_of("/set", "{\"prev_revisio\\u006e\":3,\"key\":\"k\","
                            "\"value\":\"v\"}"));
    CHECK(txn_of(&op, &c, cm, s, f));
    CHECK(c.ncmp == 1 && cm[0].target == KV_CMP_MOD && cm[0].num == 3);
    http_op_free(&op);
    op = one(req_of("/set", "{\"lease\":5,\"key\":\"k\",\"value\":\"v\"}"));
    CHECK_EQ_INT(op.kind, HTTP_OP_SET);
    CHECK(op.lease == 5);
    http_op_free(&op);
    op = one(req_of("/delete", "{\"prefix\":\"ab\",\"key\":\"\"}"));
    CHECK(txn_of(&op, &c, cm, s, f));
    CHECK_EQ_INT(op.txn_kind, HTTP_TXN_DELPREFIX);
    http_op_free(&op);
    CHECK_EQ_STR(reason_of(req_of("/set", "{\"key\":\"k\",\"value\":\"v\","
                                          "\"prev_revision\":-1}")),
                 "prev_revision must be a non-negative integer");
    CHECK_EQ_STR(
        reason_of(req_of("/delete", "{\"key\":\"k\",\"prefix\":\"k\"}")),
        "Give key or prefix, not both");
    CHECK_EQ_STR(reason_of(req_of("/delete", "{\"prefix\":\"k\","
                                             "\"prev_revision\":1}")),
                 "A prefix delete takes no conditions (use /txn)");
    CHECK_EQ_STR(
        reason_of(req_of("/set", "{\"key\":\"k\",\"prev_value\":\"x\",")),
        "Invalid JSON");
    /* the limits hold for conditional writes too */
    CHECK_EQ_INT(status_of(req_of("/set", "{\"key\":\"0123456789abcdefg\","
                                          "\"prev_revision\":1}")),
                 413);
}

TEST(txn_requests)
{
    struct kv_cmd c;
    struct kv_cmp cm[4];
    struct kv_op s[4], f[4];
    static const char body[] =
        "{\"compare\":[{\"key\":\"a\",\"target\":\"version\",\"result\":\">\","
        "\"value\":2},{\"key_b64\":\"AP8=\",\"target\":\"value\","
        "\"result\":\"!=\",\"value\":\"x\"}],"
        "\"success\":[{\"put\":{\"key\":\"a\",\"value\":\"1\"}},"
        "{\"range\":{\"from\":\"a\",\"limit\":5,\"keys_only\":true}}],"
        "\"failure\":[{\"delete_range\":{\"prefix\":\"\"}}]}";
    char req[1024];
    snprintf(req, sizeof req,
             "POST /txn HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s",
             sizeof body - 1, body);
    struct http_op op = one(req);
    CHECK(txn_of(&op, &c, cm, s, f));
    CHECK_EQ_INT(op.txn_kind, HTTP_TXN_JSON);
    CHECK(c.ncmp == 2 && cm[0].target == KV_CMP_VERSION &&
          cm[0].result == KV_CMP_GT && cm[0].num == 2);
    CHECK(cm[1].klen == 2 && memcmp(cm[1].key, "\0\xff", 2) == 0 &&
          cm[1].result == KV_CMP_NE);
    CHECK(c.nsucc == 2 && s[1].type == KV_TOP_RANGE && s[1].limit == 5 &&
          s[1].flags == (KV_RANGE_TO_END | KV_RANGE_KEYS_ONLY));
    CHECK(c.nfail == 1 && f[0].type == KV_TOP_DELRANGE &&
          f[0].flags == KV_RANGE_TO_END);
    http_op_free(&op);
    static const char *const bad[] = {
        "{\"compare\":[{\"key\":\"a\",\"target\":\"value\",\"result\":\"=\"}]}",
        "{\"success\":[{\"put\":{\"key\":\"a\"},\"get\":{\"key\":\"a\"}}]}",
        "{\"success\":[{\"range\":{\"prefix\":\"a\",\"to\":\"b\"}}]}",
        "{\"success\":[{\"range\":{}}]}",
        "{\"success\":[{\"get\":{\"key\":\"a\",\"key_b64\":\"YQ==\"}}]}",
        "{\"success\":[{\"get\":{\"key_b64\":\"YQ\"}}]}",
        "{\"success\":[{\"put\":{\"key\":\"0123456789abcdefg\"}}]}",
        "{\"failure\":{}}",
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        snprintf(req, sizeof req,
                 "POST /txn HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s",
                 strlen(bad[i]), bad[i]);
        CHECK_EQ_INT(status_of(req), 400);
    }
    CHECK_EQ_INT(status_of("GET /txn HTTP/1.1\r\n\r\n"), 405);
    /* An operation without a key, or with an empty one, is named. */
    static const char *const keyless[] = {
        "{\"success\":[{\"put\":{\"value\":\"1\"}}]}",
        "{\"failure\":[{\"get\":{}}]}",
        "{\"success\":[{\"delete\":{\"key\":\"\"}}]}",
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(keyless); i++) {
        snprintf(req, sizeof req,
                 "POST /txn HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s",
                 strlen(keyless[i]), keyless[i]);
        CHECK_EQ_INT(status_of(req), 400);
        CHECK_EQ_STR(reason_of(req), "Missing key field");
    }
}

TEST(json_strings)
{
    static const struct {
        const char *in;
        size_t n;
        const char *out;
    } cases[] = {
        {"", 0, "\"\""},
        {"abc", 3, "\"abc\""},
        {"a\"b", 3, "\"a\\\"b\""},
        {"a\"b\\c", 5, "\"a\\\"b\\\\c\""},
        {"\x01\x1f\n", 3, "\"\\u0001\\u001f\\u000a\""},
        {"x\0y", 3, "\"x\\u0000y\""},
        {"\xc3\xa9\x7f", 3, "\"\xc3\xa9\x7f\""},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(cases); i++) {
        struct pz_buf b;
        pz_buf_init(&b);
        pz_buf_append(&b, "[", 1); /* appends after what is there */
        http_json_str(&b, cases[i].in, cases[i].n);
        CHECK_EQ_INT((int)b.len, (int)strlen(cases[i].out) + 1);
        CHECK(memcmp(b.data + 1, cases[i].out, b.len - 1) == 0);
        CHECK(b.data[b.len] == '\0');
        pz_buf_free(&b);
    }
    /* A long value of control characters: 6 bytes each, all of them. */
    size_t n = 100000;
    char *v = malloc(n);
    memset(v, 1, n);
    struct pz_buf b;
    pz_buf_init(&b);
    http_json_str(&b, v, n);
    CHECK(b.len == 6 * n + 2);
    CHECK(memcmp(b.data + b.len - 7, "\\u0001\"", 7) == 0);
    pz_buf_free(&b);
    free(v);
}

TEST(base64)
{
    static const char *const plain[] = {"",     "f",     "fo",    "foo",
                                        "foob", "fooba", "foobar"};
    static const char *const enc[] = {"",         "Zg==",     "Zm8=",    "Zm9v",
                                      "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(plain); i++) {
        struct pz_buf b, d;
        pz_buf_init(&b);
        pz_buf_init(&d);
        http_b64_encode(&b, plain[i], strlen(plain[i]));
        CHECK(b.len == strlen(enc[i]) &&
              (b.len == 0 || memcmp(b.data, enc[i], b.len) == 0));
        CHECK_EQ_INT(http_b64_decode(&d, enc[i], strlen(enc[i])), 0);
        CHECK(d.len == strlen(plain[i]) &&
              (d.len == 0 || memcmp(d.data, plain[i], d.len) == 0));
        pz_buf_free(&b);
        pz_buf_free(&d);
    }
    static const char *const bad[] = {
        "Zg=", "Zg=a", "Zg=A", "Z===", "Zh==", "Zm9*", "=Zg=", "Zg==Zg=="};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        struct pz_buf d;
        pz_buf_init(&d);
        CHECK_EQ_INT(http_b64_decode(&d, bad[i], strlen(bad[i])), PZ_EINVAL);
        pz_buf_free(&d);
    }
}

TEST(protocol_errors)
{
    CHECK_EQ_INT(status_of("GARBAGE\r\n\r\n"), 400);
    CHECK_EQ_INT(status_of("GET / HTTP/9.9\r\n\r\n"), 505);
    /* both Content-Length and Transfer-Encoding */
    CHECK_EQ_INT(status_of("POST /set HTTP/1.1\r\nContent-Length: 3\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n"),
                 400);
    /* body over the 4096-byte limit: refused from the header alone */
    CHECK_EQ_INT(status_of("POST /set HTTP/1.1\r\nContent-Length: 5000\r\n"
                           "\r\n"),
                 413);
    /* too many headers (limit 50) */
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_append(&b, "GET /health HTTP/1.1\r\n", 22);
    for (int i = 0; i < 60; i++)
        pz_buf_appendf(&b, "X-H%d: v\r\n", i);
    pz_buf_append(&b, "\r\n", 2);
    CHECK_EQ_INT(status_of(b.data), 431);
    /* ... at the edge: 50 are fine, 51 are not */
    for (int n = 50; n <= 51; n++) {
        pz_buf_reset(&b);
        pz_buf_append(&b, "GET /health HTTP/1.1\r\n", 22);
        for (int i = 0; i < n; i++)
            pz_buf_appendf(&b, "X-H%d: v\r\n", i);
        pz_buf_append(&b, "\r\n", 2);
        CHECK_EQ_INT(status_of(b.data), n == 50 ? 0 : 431);
    }
    /* header bytes over the 8192 limit */
    pz_buf_reset(&b);
    pz_buf_append(&b, "GET /health HTTP/1.1\r\nX-Big: ", 29);
    for (int i = 0; i < 9000; i++)
        pz_buf_append(&b, "a", 1);
    pz_buf_append(&b, "\r\n\r\n", 4);
    CHECK_EQ_INT(status_of(b.data), 431);
    /* A URL of exactly the limit (8192 bytes) is taken; one more is 414. */
    size_t room = lim.max_header_bytes - 10; /* after "/health?x=" */
    for (size_t extra = 0; extra <= 1; extra++) {
        pz_buf_reset(&b);
        pz_buf_append(&b, "GET /health?x=", 14);
        for (size_t i = 0; i < room + extra; i++)
            pz_buf_append(&b, "a", 1);
        pz_buf_append(&b, " HTTP/1.1\r\n\r\n", 13);
        CHECK_EQ_INT(status_of(b.data), (extra ? 414 : 0));
    }
    /* URL alone over the limit */
    pz_buf_reset(&b);
    pz_buf_append(&b, "GET /get?key=", 13);
    for (int i = 0; i < 9000; i++)
        pz_buf_append(&b, "a", 1);
    pz_buf_append(&b, " HTTP/1.1\r\n\r\n", 13);
    CHECK_EQ_INT(status_of(b.data), 414);
    pz_buf_free(&b);
}

TEST(chunked_body_over_limit)
{
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_append(&b, "POST /set HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                  50);
    for (int i = 0; i < 5; i++) {
        pz_buf_append(&b, "400\r\n", 5);
        for (int j = 0; j < 1024; j++)
            pz_buf_append(&b, "x", 1);
        pz_buf_append(&b, "\r\n", 2);
    }
    CHECK_EQ_INT(status_of(b.data), 413);
    /* A chunk announced over the limit is refused from its size line,
     * before any of its bytes arrive (an announcement holds nothing). */
    CHECK_EQ_INT(status_of("POST /set HTTP/1.1\r\nTransfer-Encoding: "
                           "chunked\r\n\r\n100000\r\n"),
                 413);
    pz_buf_free(&b);
}

TEST(upgrade_h2c_ignored)
{
    /* curl --http2 offers an upgrade; we answer in HTTP/1.1 and go on. */
    static const char req[] =
        "GET /health HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        "GET /health HTTP/1.1\r\n\r\n";
    struct http_op ops[2];
    int n = run(req, sizeof req - 1, 0, ops, 2, NULL);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(ops[0].kind, HTTP_OP_HEALTH);
    CHECK_EQ_INT(ops[1].kind, HTTP_OP_HEALTH);
}

TEST(query_decoding)
{
    char *v;
    size_t l;
    const char *u = "/get?x=1&key=a+b%2Fc%00d&key=second";
    CHECK_EQ_INT(http_query_get(u, strlen(u), "key", &v, &l), 1);
    CHECK_EQ_INT(l, 7);
    CHECK(memcmp(v, "a b/c\0d", 7) == 0);
    pz_free(v);
    CHECK_EQ_INT(http_query_get(u, strlen(u), "nokey", &v, &l), 0);
    CHECK_EQ_INT(http_query_get("/g?key=%4", 9, "key", &v, &l), PZ_EINVAL);
    struct pz_buf path;
    pz_buf_init(&path);
    CHECK_EQ_INT(http_url_path("/h%65alth?x", 11, &path), 0);
    CHECK_EQ_STR(path.data, "/health");
    CHECK_EQ_INT(http_url_path("/a%00b", 6, &path), PZ_EINVAL);
    /* In a path '+' is itself; escapes first, last, back to back. */
    CHECK_EQ_INT(http_url_path("%2Fa+b%2b%2F%2f", 15, &path), 0);
    CHECK_EQ_STR(path.data, "/a+b+//");
    CHECK_EQ_INT(path.len, 7);
    CHECK_EQ_INT(http_url_path("/ab%", 4, &path), PZ_EINVAL);
    CHECK_EQ_INT(http_url_path("/ab%4", 5, &path), PZ_EINVAL);
    CHECK_EQ_INT(http_url_path("/ab%4g", 6, &path), PZ_EINVAL);
    /* An escape cut by the length is refused, whatever follows in memory. */
    CHECK_EQ_INT(http_url_path("/ab%41", 5, &path), PZ_EINVAL);
    CHECK_EQ_INT(http_url_path("/ab%41", 4, &path), PZ_EINVAL);
    CHECK_EQ_INT(http_query_get("/g?key=%41", 9, "key", &v, &l), PZ_EINVAL);
    /* An empty path in a buffer never used: a string, not bytes left
     * as malloc gave them. */
    struct pz_buf fresh;
    pz_buf_init(&fresh);
    CHECK_EQ_INT(http_url_path("?x", 2, &fresh), 0);
    CHECK_EQ_STR(fresh.data, "");
    CHECK_EQ_INT(fresh.len, 0);
    pz_buf_free(&fresh);
    CHECK_EQ_INT(http_query_get("/g?k=++%2B+", 11, "k", &v, &l), 1);
    CHECK_EQ_INT(l, 4);
    CHECK(memcmp(v, "  + ", 4) == 0);
    pz_free(v);
    pz_buf_free(&path);
}

/* Header names are found whatever their case; values keep theirs. */
TEST(header_names_any_case)
{
    static const char in[] = "GET /health HTTP/1.1\r\nHoSt: X\r\n"
                             "X-AbC-z09_~: MiXed Value\r\nAUTHORIZATION: "
                             "Bearer T@k\r\n\r\n";
    struct http_parser p;
    http_parser_init(&p, &lim);
    size_t used;
    CHECK_EQ_INT(http_parser_feed(&p, in, sizeof in - 1, &used),
                 HTTP_PARSE_REQUEST);
    CHECK_EQ_STR(http_req_header(&p.req, "host"), "X");
    CHECK_EQ_STR(http_req_header(&p.req, "x-abc-z09_~"), "MiXed Value");
    CHECK_EQ_STR(http_req_header(&p.req, "authorization"), "Bearer T@k");
    CHECK(http_req_header(&p.req, "HoSt") == NULL); /* asked in lower case */
    http_parser_free(&p);
}

/* "GET /path" and a blank line is an HTTP/0.9 request to llhttp: no
 * version, no headers. Refused, as any request that is not HTTP/1.x. */
TEST(no_version_is_400)
{
    struct http_op op = one("GET /health\r\n\r\n");
    CHECK_EQ_INT(op.kind, HTTP_OP_ERROR);
    CHECK_EQ_INT(op.status, 400);
    http_op_free(&op);
    struct http_parser p;
    size_t used;
    http_parser_init(&p, &lim);
    CHECK_EQ_INT(http_parser_feed(&p, "GET /health\r\n\r\n", 15, &used),
                 HTTP_PARSE_ERROR);
    CHECK_EQ_STR(p.err_reason, "Request line without an HTTP/1.x version");
    http_parser_free(&p);
    CHECK_EQ_INT(status_of("GET /health HTTP/1.0\r\n\r\n"), 0);
}

/* A chunk size over what is left of the body limit is refused on its size
 * line, before any of its data; one that fits waits for its data. */
TEST(chunk_size_over_limit_refused_at_once)
{
    static const char head[] =
        "POST /set HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    struct pz_buf b;
    pz_buf_init(&b);
    struct http_parser p;
    size_t used;
    /* 0x1000 = 4096: exactly the limit. */
    pz_buf_appendf(&b, "%s1000\r\n", head);
    http_parser_init(&p, &lim);
    CHECK_EQ_INT(http_parser_feed(&p, b.data, b.len, &used),
                 HTTP_PARSE_NEED_MORE);
    http_parser_free(&p);
    pz_buf_reset(&b);
    pz_buf_appendf(&b, "%s1001\r\n", head);
    http_parser_init(&p, &lim);
    CHECK_EQ_INT(http_parser_feed(&p, b.data, b.len, &used), HTTP_PARSE_ERROR);
    CHECK_EQ_INT(p.err_status, 413);
    http_parser_free(&p);
    /* After 3000 bytes, a chunk of 1097 is one too many. */
    pz_buf_reset(&b);
    pz_buf_appendf(&b, "%sbb8\r\n", head);
    for (int i = 0; i < 3000; i++)
        pz_buf_append(&b, "x", 1);
    pz_buf_appendf(&b, "\r\n449\r\n");
    http_parser_init(&p, &lim);
    CHECK_EQ_INT(http_parser_feed(&p, b.data, b.len, &used), HTTP_PARSE_ERROR);
    CHECK_EQ_INT(p.err_status, 413);
    http_parser_free(&p);
    pz_buf_free(&b);
}

/* How far a request got, fed a byte at a time: blank lines alone do not
 * start one (a few are tolerated), its first byte does. */
TEST(phases_and_start)
{
    static const char req[] = "\r\nPOST /set HTTP/1.1\r\nContent-Length: 2"
                              "\r\n\r\n{}";
    struct http_parser p;
    size_t used;
    http_parser_init(&p, &lim);
    const char *body = strstr(req, "{}");
    const char *line = strstr(req, "POST");
    for (const char *c = req; *c; c++) {
        int r = http_parser_feed(&p, c, 1, &used);
        CHECK_EQ_INT(used, 1);
        if (c < line) {
            CHECK(!http_parser_started(&p));
            CHECK_EQ_INT(p.phase, HTTP_PHASE_IDLE);
        } else if (c < body - 1) {
            CHECK(http_parser_started(&p));
            CHECK_EQ_INT(p.phase, HTTP_PHASE_HEADERS);
        } else if (c[1] != '\0') {
            CHECK_EQ_INT(p.phase, HTTP_PHASE_BODY);
        } else {
            CHECK_EQ_INT(r, HTTP_PARSE_REQUEST);
            CHECK_EQ_INT(p.phase, HTTP_PHASE_DONE);
        }
    }
    http_parser_next(&p);
    CHECK(!http_parser_started(&p));
    /* Blank lines without end count as a start. */
    for (int i = 0; i < 8; i++)
        CHECK_EQ_INT(http_parser_feed(&p, "\r\n", 2, &used),
                     HTTP_PARSE_NEED_MORE);
    CHECK(http_parser_started(&p));
    http_parser_free(&p);
}

/* The body buffer follows what arrived and what was announced; what the
 * parser holds is reported; a large buffer is let go after the request. */
TEST(body_memory)
{
    static const struct http_limits big = {8192, 50, 1 << 20};
    struct http_parser p;
    struct pz_buf b;
    size_t used;
    size_t n = 300000;
    pz_buf_init(&b);
    pz_buf_appendf(&b, "POST /set HTTP/1.1\r\nContent-Length: %zu\r\n\r\n", n);
    size_t head = b.len;
    for (size_t i = 0; i < n; i++)
        pz_buf_append(&b, "x", 1);
    http_parser_init(&p, &big);
    /* An announcement alone allocates no body. */
    CHECK_EQ_INT(http_parser_feed(&p, b.data, head, &used),
                 HTTP_PARSE_NEED_MORE);
    CHECK_EQ_INT(p.req.body.cap, 0);
    size_t held0 = http_parser_held(&p);
    CHECK(held0 > 0 && held0 < 1024);
    int r = HTTP_PARSE_NEED_MORE;
    for (size_t off = head; off < b.len; off += 1000) {
        r = http_parser_feed(&p, b.data + off, PZ_MIN(1000, b.len - off),
                             &used);
        CHECK(p.req.body.cap <= PZ_MAX(2 * p.req.body.len, (size_t)256) + 1);
        CHECK(p.req.body.cap <= n + 1);
        CHECK(http_parser_held(&p) >= p.req.body.cap);
    }
    CHECK_EQ_INT(r, HTTP_PARSE_REQUEST);
    CHECK_EQ_INT(p.req.body.len, n);
    CHECK_EQ_INT(p.req.body.cap, n + 1);
    http_parser_next(&p);
    CHECK_EQ_INT(p.req.body.cap, 0);
    CHECK(http_parser_held(&p) < 1024);
    http_parser_free(&p);
    pz_buf_free(&b);
}

/* A parser freed in the middle of a body (a client gone mid-request) lets
 * go of everything it holds. It lives in memory freed with it, as in a
 * connection, so that nothing still points at what it held. */
TEST(parser_freed_mid_body_leaks_nothing)
{
    static const char req[] = "POST /set HTTP/1.1\r\nX-A: b\r\n"
                              "Content-Length: 100\r\n\r\n0123456789";
    struct http_parser *p = pz_malloc(sizeof *p);
    size_t used;
    http_parser_init(p, &lim);
    CHECK_EQ_INT(http_parser_feed(p, req, sizeof req - 1, &used),
                 HTTP_PARSE_NEED_MORE);
    CHECK_EQ_INT(p->req.body.len, 10);
    http_parser_free(p);
    pz_free(p);
}

TEST(lease_requests)
{
    struct http_op op = one(req_of("/lease/grant", "{\"ttl\":30}"));
    CHECK(op.kind == HTTP_OP_LEASE_GRANT && op.lease_ttl == 30 &&
          op.lease_id == 0);
    http_op_free(&op);
    op = one(req_of("/lease/grant", "{\"ttl\":5,\"id\":9007199254740991}"));
    CHECK(op.kind == HTTP_OP_LEASE_GRANT && op.lease_id == KV_LEASE_ID_MAX);
    http_op_free(&op);
    op = one(req_of("/lease/keepalive", "{\"id\":7}"));
    CHECK(op.kind == HTTP_OP_LEASE_KEEPALIVE && op.lease_id == 7);
    http_op_free(&op);
    op = one(req_of("/lease/revoke", "{\"id\":7}"));
    CHECK(op.kind == HTTP_OP_LEASE_REVOKE && op.lease_id == 7);
    http_op_free(&op);
    op = one("GET /lease?id=12&keys=true HTTP/1.1\r\n\r\n");
    CHECK(op.kind == HTTP_OP_LEASE_GET && op.lease_id == 12 && op.keys_only);
    http_op_free(&op);
    /* The largest id, 2^53 - 1, also with leading zeros up to 19 digits. */
    op = one("GET /lease?id=9007199254740991 HTTP/1.1\r\n\r\n");
    CHECK(op.kind == HTTP_OP_LEASE_GET && op.lease_id == KV_LEASE_ID_MAX);
    http_op_free(&op);
    op = one("GET /lease?id=0009007199254740991 HTTP/1.1\r\n\r\n");
    CHECK(op.kind == HTTP_OP_LEASE_GET && op.lease_id == KV_LEASE_ID_MAX);
    http_op_free(&op);
    op = one("GET /leases HTTP/1.1\r\n\r\n");
    CHECK(op.kind == HTTP_OP_LEASE_LIST);
    http_op_free(&op);
    /* a plain /set with a lease stays a plain set; with a condition the
     * transaction's put carries it */
    op = one(req_of("/set", "{\"key\":\"k\",\"value\":\"v\",\"lease\":7}"));
    CHECK(op.kind == HTTP_OP_SET && op.lease == 7);
    http_op_free(&op);
    struct kv_cmd c;
    struct kv_cmp cm[4];
    struct kv_op s[4], f[4];
    op = one(req_of("/set", "{\"key\":\"k\",\"value\":\"v\",\"lease\":7,"
                            "\"prev_revision\":0}"));
    CHECK(txn_of(&op, &c, cm, s, f) && s[0].lease == 7);
    http_op_free(&op);
    op = one(req_of("/txn", "{\"success\":[{\"put\":{\"key\":\"k\","
                            "\"value\":\"v\",\"lease\":8}}]}"));
    CHECK(txn_of(&op, &c, cm, s, f) && s[0].lease == 8);
    http_op_free(&op);
    static const char *const bad[] = {
        "{\"ttl\":0}", "{\"ttl\":-1}", "{\"ttl\":\"5\"}", "{\"ttl\":1.5}",
        "{}", "[]", "{\"ttl\":315360001}", "{\"ttl\":5,\"id\":0}",
        "{\"ttl\":5,\"id\":9007199254740992}",
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++)
        CHECK_EQ_INT(status_of(req_of("/lease/grant", bad[i])), 400);
    CHECK_EQ_INT(status_of(req_of("/lease/revoke", "{}")), 400);
    CHECK_EQ_INT(status_of(req_of("/lease/keepalive", "{\"id\":\"1\"}")),
                 400);
    CHECK_EQ_INT(status_of(req_of("/set", "{\"key\":\"k\",\"lease\":-3}")),
                 400);
    CHECK_EQ_INT(
        status_of(req_of("/txn", "{\"success\":[{\"put\":{\"key\":\"k\","
                                 "\"lease\":\"x\"}}]}")),
        400);
    static const char *const badq[] = {
        "GET /lease HTTP/1.1\r\n\r\n",
        "GET /lease?id= HTTP/1.1\r\n\r\n",
        "GET /lease?id=0 HTTP/1.1\r\n\r\n",
        "GET /lease?id=-1 HTTP/1.1\r\n\r\n",
        "GET /lease?id=1x HTTP/1.1\r\n\r\n",
        "GET /lease?id=9007199254740992 HTTP/1.1\r\n\r\n",
        "GET /lease?id=99999999999999999999999 HTTP/1.1\r\n\r\n",
        "GET /lease?id=1&keys=yes HTTP/1.1\r\n\r\n",
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(badq); i++)
        CHECK_EQ_INT(status_of(badq[i]), 400);
    CHECK_EQ_INT(status_of("GET /lease/grant HTTP/1.1\r\n\r\n"), 405);
    CHECK_EQ_INT(status_of(req_of("/lease", "{}")), 405);
    CHECK_EQ_INT(status_of(req_of("/leases", "{}")), 405);
}

/* http_bearer_value narrows to the credential, within the length given
 * (gRPC metadata values are not NUL-terminated). */
/* A revision from a client or a peer: digits only, up to the store's
 * highest, nothing written on a refusal. */
TEST(parse_revision)
{
    uint64_t v = 7;
    CHECK(http_parse_revision("0", 1, &v) && v == 0);
    CHECK(http_parse_revision("12", 2, &v) && v == 12);
    CHECK(http_parse_revision("4611686018427387903", 19, &v) &&
          v == KV_REVISION_MAX);
    v = 7;
    const char *bad[] = {"",
                         "-1",
                         "+1",
                         " 1",
                         "1 ",
                         "1x",
                         "0x10",
                         "4611686018427387904",
                         "18446744073709551615",
                         "18446744073709551616",
                         "000000000000000000001"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        CHECK(!http_parse_revision(bad[i], strlen(bad[i]), &v) && v == 7);
    /* only n bytes are read */
    CHECK(http_parse_revision("42junk", 2, &v) && v == 42);
}

TEST(bearer_value)
{
    const char *v = "Bearer  abc \t";
    size_t n = strlen(v);
    CHECK(http_bearer_value(&v, &n));
    CHECK_EQ_INT((int)n, 3);
    CHECK(memcmp(v, "abc", 3) == 0);
    v = "bEaReR x-y";
    n = 8; /* "bEaReR x" */
    CHECK(http_bearer_value(&v, &n));
    CHECK(n == 1 && v[0] == 'x');
    const char *bad[] = {"Bearer", "Bearer ", "Bearer \t ", "Basic x",
                         "Bearerx", "", "x"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        v = bad[i];
        n = strlen(v);
        CHECK(!http_bearer_value(&v, &n));
        CHECK(v == bad[i]); /* untouched */
    }
}

static const struct test_case cases[] = {
    TEST_ENTRY(pipelined_whole),
    TEST_ENTRY(pipelined_byte_by_byte),
    TEST_ENTRY(pipelined_odd_chunks),
    TEST_ENTRY(api_errors),
    TEST_ENTRY(health_serializable),
    TEST_ENTRY(api_json_forms),
    TEST_ENTRY(range_requests),
    TEST_ENTRY(conditional_writes),
    TEST_ENTRY(lease_requests),
    TEST_ENTRY(txn_requests),
    TEST_ENTRY(json_strings),
    TEST_ENTRY(base64),
    TEST_ENTRY(protocol_errors),
    TEST_ENTRY(chunked_body_over_limit),
    TEST_ENTRY(upgrade_h2c_ignored),
    TEST_ENTRY(query_decoding),
    TEST_ENTRY(header_names_any_case),
    TEST_ENTRY(no_version_is_400),
    TEST_ENTRY(chunk_size_over_limit_refused_at_once),
    TEST_ENTRY(phases_and_start),
    TEST_ENTRY(body_memory),
    TEST_ENTRY(parser_freed_mid_body_leaks_nothing),
    TEST_ENTRY(bearer_value),
    TEST_ENTRY(parse_revision),
    TEST_END};
const struct test_suite suite_http = {"http", cases};
