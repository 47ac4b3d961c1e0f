/* fuzz_http_parse.c - HTTP/1.1 requests from a client, as httpd.c reads
 * them for http.c and mandi.c: http_parser_feed() over a connection's
 * bytes, each complete request decoded by http_api_decode() and the
 * parser reset for the next pipelined one, until an error, a request that
 * does not keep the connection alive, or the end of the input.
 *
 * The input is the byte stream. It is fed whole, then in pieces of random
 * sizes (seeded by the input), then one byte at a time (short inputs):
 * the requests and the final outcome must be the same every time. This
 * runs with the default limits and with small ones, so that the 413, 414
 * and 431 paths are reached by short inputs. The query and percent-coding
 * helpers are also checked on each request's URL. */
#include "fuzz.h"

#include "http_parse.h"
#include "kv.h"
#include "pz.h"

#define MAX_REQS 64 /* requests recorded per stream */

/* What a feeding produced: a digest of every request and the end. */
struct outcome {
    size_t n_reqs;             /* requests completed */
    uint64_t digest[MAX_REQS]; /* per request: method, URL, headers, body */
    int end;                   /* HTTP_PARSE_* the stream ended with */
    int err_status;            /* on HTTP_PARSE_ERROR */
    char err_reason[128];      /* on HTTP_PARSE_ERROR */
    size_t consumed;           /* bytes consumed in all */
};

static uint64_t mix(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return (h ^ n) * 0x100000001b3ull;
}

static uint64_t req_digest(const struct http_req *r)
{
    uint64_t h = 0xcbf29ce484222325ull;
    h = mix(h, &r->method, sizeof r->method);
    h = mix(h, r->url.data ? r->url.data : "", r->url.len);
    h = mix(h, r->body.data ? r->body.data : "", r->body.len);
    for (size_t i = 0; i < r->n_headers; i++) {
        h = mix(h, r->headers[i].name, strlen(r->headers[i].name));
        h = mix(h, r->headers[i].value, strlen(r->headers[i].value));
    }
    return mix(h, &r->keep_alive, sizeof r->keep_alive);
}

/* A percent-encoder that escapes every byte, for round trips. */
static void pct_encode_all(struct pz_buf *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char e[3] = {'%', hex[c >> 4], hex[c & 15]};
        pz_buf_append(out, e, 3);
    }
}

/* The URL helpers on one request target. */
static void check_url(const char *url, size_t len)
{
    struct pz_buf path, dec, enc, back;
    pz_buf_init(&path);
    int rv = http_url_path(url, len, &path);
    FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);
    if (rv == 0) {
        FUZZ_CHECK(path.data != NULL && path.len <= len);
        FUZZ_CHECK(memchr(path.data, 0, path.len) == NULL);
    }
    pz_buf_free(&path);

    static const char *const names[] = {"key", "consistency", "to", "id", ""};
    for (size_t k = 0; k < PZ_ARRAY_SIZE(names); k++) {
        char *v = (char *)1;
        size_t vl = 12345;
        rv = http_query_get(url, len, names[k], &v, &vl);
        FUZZ_CHECK(rv == 0 || rv == 1 || rv == PZ_EINVAL);
        if (rv == 1) {
            FUZZ_CHECK(v != NULL && vl < len);
            pz_free(v);
        } else {
            FUZZ_CHECK(v == NULL && vl == 0);
        }
    }

    /* Decoding never grows; encoding every byte then decoding gives the
     * bytes back (with '+' kept as is when it is not a query). */
    pz_buf_init(&dec);
    pz_buf_init(&enc);
    pz_buf_init(&back);
    rv = http_pct_decode(&dec, url, len, true);
    FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);
    FUZZ_CHECK(dec.len <= len);
    pct_encode_all(&enc, url, len);
    rv = http_pct_decode(&back, enc.data ? enc.data : "", enc.len, false);
    FUZZ_CHECK(rv == 0);
    FUZZ_CHECK(back.len == len);
    FUZZ_CHECK(len == 0 || memcmp(back.data, url, len) == 0);
    /* The encoder of outgoing targets: it escapes all but the unreserved
     * bytes, and decoding (as a query, where '+' is a space) gives the
     * bytes back. */
    pz_buf_reset(&enc);
    pz_buf_reset(&back);
    http_pct_encode(&enc, url, len);
    for (size_t i = 0; i < enc.len; i++)
        FUZZ_CHECK(strchr("%-._~", enc.data[i]) != NULL ||
                   (enc.data[i] >= '0' && enc.data[i] <= '9') ||
                   ((enc.data[i] | 0x20) >= 'a' && (enc.data[i] | 0x20) <= 'z'));
    rv = http_pct_decode(&back, enc.data ? enc.data : "", enc.len, true);
    FUZZ_CHECK(rv == 0 && back.len == len);
    FUZZ_CHECK(len == 0 || memcmp(back.data, url, len) == 0);
    pz_buf_free(&dec);
    pz_buf_free(&enc);
    pz_buf_free(&back);
}

static void check_op(const struct http_req *req,
                     const struct http_api_limits *al)
{
    struct http_op op;
    http_api_decode(req, al, &op);
    switch (op.kind) {
    case HTTP_OP_ERROR:
        FUZZ_CHECK(op.status >= 400 && op.status <= 499);
        FUZZ_CHECK(op.reason != NULL && op.reason[0] != '\0');
        FUZZ_CHECK(strchr(op.reason, '\n') == NULL);
        FUZZ_CHECK(op.status != 405 || op.allow != NULL);
        break;
    case HTTP_OP_GET:
    case HTTP_OP_DEL:
    case HTTP_OP_SET:
        FUZZ_CHECK(op.key != NULL && op.klen > 0 && op.klen <= al->max_key);
        FUZZ_CHECK(op.kind != HTTP_OP_SET ||
                   (op.value != NULL && op.vlen <= al->max_value));
        FUZZ_CHECK(op.kind == HTTP_OP_SET || op.value == NULL);
        break;
    case HTTP_OP_REMOVE:
    case HTTP_OP_TRANSFER:
        FUZZ_CHECK(op.key != NULL && op.klen > 0 && op.needs_auth);
        FUZZ_CHECK(memchr(op.key, 0, op.klen) == NULL);
        break;
    case HTTP_OP_HEALTH:
    case HTTP_OP_STATUS:
    case HTTP_OP_METRICS:
    case HTTP_OP_CLUSTER:
    case HTTP_OP_SNAPSHOT:
    case HTTP_OP_BACKUP:
        FUZZ_CHECK(op.key == NULL);
        break;
    case HTTP_OP_RANGE:
        FUZZ_CHECK(op.key != NULL);
        FUZZ_CHECK(op.limit >= 1 && op.limit <= HTTP_RANGE_LIMIT_MAX);
        FUZZ_CHECK(op.to_end == (op.end == NULL));
        break;
    case HTTP_OP_TXN: {
        /* What it proposes is a transaction every node can decode. */
        struct kv_cmd c;
        FUZZ_CHECK(kv_decode((const uint8_t *)op.cmd.data, op.cmd.len, &c) ==
                   0);
        FUZZ_CHECK(c.op == KV_OP_TXN);
        FUZZ_CHECK(op.txn_kind == HTTP_TXN_JSON || c.nsucc == 1);
        break;
    }
    case HTTP_OP_WATCH: /* its parameters are read by http_watch.c */
    case HTTP_OP_LEASE_LIST:
        break;
    case HTTP_OP_LEASE_GRANT:
        /* id 0: the leader picks one */
        FUZZ_CHECK(op.lease_id <= KV_LEASE_ID_MAX);
        FUZZ_CHECK(op.lease_ttl >= 1 && op.lease_ttl <= KV_LEASE_TTL_MAX);
        break;
    case HTTP_OP_LEASE_KEEPALIVE:
    case HTTP_OP_LEASE_REVOKE:
    case HTTP_OP_LEASE_GET:
        FUZZ_CHECK(op.lease_id >= 1 && op.lease_id <= KV_LEASE_ID_MAX);
        break;
    default:
        FUZZ_CHECKF(0, "unknown op kind %d", (int)op.kind);
    }
    http_op_free(&op);
    FUZZ_CHECK(op.key == NULL && op.value == NULL && op.end == NULL &&
               op.cmd.data == NULL);
}

enum feed_mode { WHOLE, PIECES, BYTES };

/* Feed the stream as a connection would (the unconsumed rest of a buffer
 * is kept and fed again after a request), in pieces chosen by mode. */
static void feed(const uint8_t *data, size_t size, enum feed_mode mode,
                 const struct http_limits *lim,
                 const struct http_api_limits *al, bool check,
                 struct outcome *o)
{
    struct http_parser p;
    struct pz_buf in;
    uint64_t rng = fuzz_hash(data, size);
    size_t pos = 0;
    memset(o, 0, sizeof *o);
    http_parser_init(&p, lim);
    pz_buf_init(&in);
    o->end = HTTP_PARSE_NEED_MORE;
    while (pos < size || in.len > 0) {
        if (pos < size) {
            size_t n = mode == WHOLE ? size - pos
                       : mode == BYTES ? 1
                                       : fuzz_piece(&rng, size - pos);
            pz_buf_append(&in, data + pos, n);
            pos += n;
        }
        bool stop = false;
        while (in.len > 0) {
            /* A private copy of exactly the buffered bytes: reads past
             * them are ASan reports. */
            uint8_t *copy = fuzz_dup(in.data, in.len);
            size_t used = SIZE_MAX;
            int r = http_parser_feed(&p, (const char *)copy, in.len, &used);
            free(copy);
            FUZZ_CHECKF(used <= in.len, "used %zu of %zu", used, in.len);
            pz_buf_consume(&in, used);
            o->consumed += used;
            if (r == HTTP_PARSE_NEED_MORE) {
                FUZZ_CHECK(in.len == 0);
                break;
            }
            if (r == HTTP_PARSE_ERROR) {
                FUZZ_CHECK(p.err_status >= 400 && p.err_status <= 599);
                FUZZ_CHECK(p.err_reason[0] != '\0');
                o->end = r;
                o->err_status = p.err_status;
                memcpy(o->err_reason, p.err_reason, sizeof o->err_reason);
                /* A dead parser stays dead. */
                size_t u2;
                FUZZ_CHECK(http_parser_feed(&p, "x", 1, &u2) ==
                               HTTP_PARSE_ERROR &&
                           u2 == 0);
                stop = true;
                break;
            }
            FUZZ_CHECK(r == HTTP_PARSE_REQUEST && p.complete);
            struct http_req *req = &p.req;
            FUZZ_CHECK(req->body.len <= lim->max_body);
            FUZZ_CHECK(req->n_headers <= lim->max_headers);
            for (size_t i = 0; i < req->n_headers; i++) {
                const char *nm = req->headers[i].name;
                for (const char *c = nm; *c; c++)
                    FUZZ_CHECK(!(*c >= 'A' && *c <= 'Z'));
                FUZZ_CHECK(http_req_header(req, nm) != NULL);
            }
            if (o->n_reqs < MAX_REQS)
                o->digest[o->n_reqs] = req_digest(req);
            o->n_reqs++;
            if (check) {
                check_url(req->url.data ? req->url.data : "", req->url.len);
                check_op(req, al);
            }
            bool ka = req->keep_alive;
            http_parser_next(&p);
            o->end = HTTP_PARSE_REQUEST;
            if (!ka) { /* http.c closes after answering */
                stop = true;
                break;
            }
        }
        if (stop)
            break;
    }
    http_parser_free(&p);
    pz_buf_free(&in);
}

static bool is_limit(int status)
{
    return status == 413 || status == 414 || status == 431;
}

static void same(const struct outcome *a, const struct outcome *b,
                 const char *how)
{
    FUZZ_CHECKF(a->n_reqs == b->n_reqs, "%s: %zu requests, whole: %zu", how,
                b->n_reqs, a->n_reqs);
    size_t n = a->n_reqs < MAX_REQS ? a->n_reqs : MAX_REQS;
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECKF(a->digest[i] == b->digest[i], "%s: request %zu differs",
                    how, i);
    FUZZ_CHECKF(a->end == b->end, "%s: ends with %d, whole: %d", how, b->end,
                a->end);
    /* Limits are checked in llhttp's span callbacks, which come once per
     * piece of input: when a request breaks a limit and the syntax too,
     * which one is seen first depends on the pieces (413/414/431 or
     * 400). Two syntax errors must be the same. */
    bool limit = is_limit(a->err_status) || is_limit(b->err_status);
    FUZZ_CHECKF(limit || (a->err_status == b->err_status &&
                          strcmp(a->err_reason, b->err_reason) == 0),
                "%s: error %d '%s', whole: %d '%s'", how, b->err_status,
                b->err_reason, a->err_status, a->err_reason);
    /* After an error, what counts as consumed depends on where the feed
     * that failed began. */
    FUZZ_CHECKF(a->end == HTTP_PARSE_ERROR || a->consumed == b->consumed,
                "%s: consumed %zu, whole: %zu", how, b->consumed,
                a->consumed);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct http_limits lims[2] = {
        {16 * 1024, 100, 4 * 1024 * 1024}, /* the defaults */
        {200, 6, 64},                      /* small: limits in reach */
    };
    static const struct http_api_limits als[2] = {
        {64 * 1024, 1024 * 1024},
        {8, 16},
    };
    for (int k = 0; k < 2; k++) {
        struct outcome whole, other;
        feed(data, size, WHOLE, &lims[k], &als[k], true, &whole);
        feed(data, size, PIECES, &lims[k], &als[k], false, &other);
        same(&whole, &other, "pieces");
        if (size <= 512) {
            feed(data, size, BYTES, &lims[k], &als[k], false, &other);
            same(&whole, &other, "bytes");
        }
    }
    return 0;
}
