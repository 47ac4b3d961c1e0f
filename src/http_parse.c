/* http_parse.c - see http_parse.h. Pure: bytes in, requests out. */
#include "http_parse.h"

#include <ctype.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "json.h"

/* Blank lines tolerated before a request without counting as its start
 * (one CRLF after a body, as some old clients send). */
#define BLANK_BYTES_OK 4
/* Buffers above these sizes are freed between requests. */
#define KEEP_BODY_MAX (64 * 1024)
#define KEEP_LINE_MAX (4 * 1024)

static struct http_parser *parser_of(llhttp_t *ll)
{
    return container_of(ll, struct http_parser, ll);
}

static int fail(struct http_parser *p, int status, const char *reason)
{
    if (p->err_status == 0) {
        p->err_status = status;
        snprintf(p->err_reason, sizeof p->err_reason, "%s", reason);
    }
    return -1; /* llhttp: HPE_USER */
}

static int count_header_bytes(struct http_parser *p, size_t n)
{
    p->header_bytes += n;
    if (p->header_bytes > p->lim.max_header_bytes)
        return fail(p, 431, "Request header fields too large");
    return 0;
}

static int on_url(llhttp_t *ll, const char *at, size_t n)
{
    struct http_parser *p = parser_of(ll);
    if (p->req.url.len + n > p->lim.max_header_bytes)
        return fail(p, 414, "URI too long");
    if (count_header_bytes(p, n))
        return -1;
    pz_buf_append(&p->req.url, at, n);
    return 0;
}

static int finish_header(struct http_parser *p)
{
    if (p->field.len == 0)
        return 0;
    if (p->req.n_headers >= p->lim.max_headers)
        return fail(p, 431, "Too many header fields");
    if (memchr(p->value.data ? p->value.data : "", 0, p->value.len))
        return fail(p, 400, "Bad header value");
    struct http_header *h;
    p->req.headers = pz_realloc(p->req.headers, (p->req.n_headers + 1) *
                                                    sizeof *p->req.headers);
    h = &p->req.headers[p->req.n_headers++];
    p->headers_held += sizeof *h + p->field.len + p->value.len + 2;
    for (size_t i = 0; i < p->field.len; i++)
        p->field.data[i] = (char)tolower((unsigned char)p->field.data[i]);
    h->name = pz_strndup(p->field.data, p->field.len);
    h->value = pz_strndup(p->value.len ? p->value.data : "", p->value.len);
    pz_buf_reset(&p->field);
    pz_buf_reset(&p->value);
    return 0;
}

static int on_header_field(llhttp_t *ll, const char *at, size_t n)
{
    struct http_parser *p = parser_of(ll);
    if (count_header_bytes(p, n))
        return -1;
    pz_buf_append(&p->field, at, n);
    return 0;
}

static int on_header_value(llhttp_t *ll, const char *at, size_t n)
{
    struct http_parser *p = parser_of(ll);
    if (count_header_bytes(p, n))
        return -1;
    pz_buf_append(&p->value, at, n);
    return 0;
}

static int on_header_value_complete(llhttp_t *ll)
{
    struct http_parser *p = parser_of(ll);
    if (count_header_bytes(p, 4)) /* ": " and CRLF */
        return -1;
    return finish_header(p);
}

static int on_message_begin(llhttp_t *ll)
{
    parser_of(ll)->phase = HTTP_PHASE_HEADERS;
    return 0;
}

static int on_headers_complete(llhttp_t *ll)
{
    struct http_parser *p = parser_of(ll);
    if (finish_header(p))
        return -1;
    /* llhttp takes "GET /path" and a blank line for HTTP/0.9, a request
     * with no headers at all, not even Host: not HTTP/1.x. */
    if (ll->http_major != 1)
        return fail(p, 400, "Request line without an HTTP/1.x version");
    /* Refuse an announced oversized body before reading any of it. */
    if ((ll->flags & F_CONTENT_LENGTH) && ll->content_length > p->lim.max_body)
        return fail(p, 413, "Request body too large");
    p->body_expected = (ll->flags & F_CONTENT_LENGTH) ? ll->content_length : 0;
    p->req.method = ll->method;
    p->phase = HTTP_PHASE_BODY;
    return 0;
}

/* A chunk's size is known before its data: refuse one that cannot fit,
 * as an announced Content-Length. */
static int on_chunk_header(llhttp_t *ll)
{
    struct http_parser *p = parser_of(ll);
    if (ll->content_length > p->lim.max_body - p->req.body.len)
        return fail(p, 413, "Request body too large");
    return 0;
}

/* Room for n more body bytes: at most twice what arrived, never more
 * than the announced length (or the limit), so an announcement alone
 * allocates nothing and a complete body wastes little. */
static void body_grow(struct http_parser *p, size_t n)
{
    struct pz_buf *b = &p->req.body;
    size_t need = b->len + n + 1;
    if (need <= b->cap)
        return;
    size_t end =
        (p->body_expected ? (size_t)p->body_expected : p->lim.max_body) + 1;
    size_t cap = PZ_MAX(need, PZ_MIN(PZ_MAX(2 * b->cap, (size_t)256), end));
    b->data = pz_realloc(b->data, cap);
    b->cap = cap;
}

static int on_body(llhttp_t *ll, const char *at, size_t n)
{
    struct http_parser *p = parser_of(ll);
    if (p->req.body.len + n > p->lim.max_body)
        return fail(p, 413, "Request body too large");
    body_grow(p, n);
    pz_buf_append(&p->req.body, at, n);
    return 0;
}

static int on_message_complete(llhttp_t *ll)
{
    struct http_parser *p = parser_of(ll);
    p->req.keep_alive = llhttp_should_keep_alive(ll) != 0;
    p->complete = true;
    p->phase = HTTP_PHASE_DONE;
    return HPE_PAUSED; /* serve this one before parsing the next */
}

void http_parser_init(struct http_parser *p, const struct http_limits *lim)
{
    memset(p, 0, sizeof *p);
    p->lim = *lim;
    llhttp_settings_init(&p->settings);
    p->settings.on_message_begin = on_message_begin;
    p->settings.on_url = on_url;
    p->settings.on_header_field = on_header_field;
    p->settings.on_header_value = on_header_value;
    p->settings.on_header_value_complete = on_header_value_complete;
    p->settings.on_headers_complete = on_headers_complete;
    p->settings.on_chunk_header = on_chunk_header;
    p->settings.on_body = on_body;
    p->settings.on_message_complete = on_message_complete;
    llhttp_init(&p->ll, HTTP_REQUEST, &p->settings);
    pz_buf_init(&p->req.url);
    pz_buf_init(&p->req.body);
    pz_buf_init(&p->field);
    pz_buf_init(&p->value);
}

static void req_clear(struct http_req *r)
{
    for (size_t i = 0; i < r->n_headers; i++) {
        pz_free(r->headers[i].name);
        pz_free(r->headers[i].value);
    }
    pz_free(r->headers);
    r->headers = NULL;
    r->n_headers = 0;
    pz_buf_reset(&r->url);
    pz_buf_reset(&r->body);
    r->method = 0;
    r->keep_alive = false;
}

void http_parser_free(struct http_parser *p)
{
    req_clear(&p->req);
    pz_buf_free(&p->req.url);
    pz_buf_free(&p->req.body);
    pz_buf_free(&p->field);
    pz_buf_free(&p->value);
}

/* Empty b, and let its memory go if it grew past keep. */
static void buf_trim(struct pz_buf *b, size_t keep)
{
    if (b->cap > keep)
        pz_buf_free(b);
    else
        pz_buf_reset(b);
}

void http_parser_next(struct http_parser *p)
{
    req_clear(&p->req);
    buf_trim(&p->req.body, KEEP_BODY_MAX);
    buf_trim(&p->req.url, KEEP_LINE_MAX);
    buf_trim(&p->field, KEEP_LINE_MAX);
    buf_trim(&p->value, KEEP_LINE_MAX);
    p->header_bytes = 0;
    p->headers_held = 0;
    p->body_expected = 0;
    p->skipped = 0;
    p->phase = HTTP_PHASE_IDLE;
    p->complete = false;
    if (llhttp_get_errno(&p->ll) == HPE_PAUSED_UPGRADE)
        llhttp_resume_after_upgrade(&p->ll);
    else if (llhttp_get_errno(&p->ll) == HPE_PAUSED)
        llhttp_resume(&p->ll);
}

bool http_parser_started(const struct http_parser *p)
{
    return p->phase != HTTP_PHASE_IDLE || p->skipped > BLANK_BYTES_OK;
}

size_t http_parser_held(const struct http_parser *p)
{
    return p->req.url.cap + p->req.body.cap + p->field.cap + p->value.cap +
           p->headers_held;
}

static int feed(struct http_parser *p, const char *data, size_t len,
                size_t *used);

int http_parser_feed(struct http_parser *p, const char *data, size_t len,
                     size_t *used)
{
    bool idle = p->phase == HTTP_PHASE_IDLE;
    int r = feed(p, data, len, used);
    if (idle && p->phase == HTTP_PHASE_IDLE)
        p->skipped += *used; /* llhttp skips blank lines before a request */
    return r;
}

static int feed(struct http_parser *p, const char *data, size_t len,
                size_t *used)
{
    *used = 0;
    if (p->dead)
        return HTTP_PARSE_ERROR;
    pz_assert(!p->complete);
    if (len == 0)
        return HTTP_PARSE_NEED_MORE;
    llhttp_errno_t e = llhttp_execute(&p->ll, data, len);
    if (e == HPE_PAUSED_UPGRADE && !p->complete) {
        /* DEPS.md: after a request offering `Upgrade: h2c` llhttp stops
         * once more; we do not upgrade, so carry on in HTTP/1.1. */
        const char *pos = llhttp_get_error_pos(&p->ll);
        size_t done = pos ? (size_t)(pos - data) : 0;
        llhttp_resume_after_upgrade(&p->ll);
        int r = feed(p, data + done, len - done, used);
        *used += done;
        return r;
    }
    if (e == HPE_OK) {
        *used = len;
        return HTTP_PARSE_NEED_MORE;
    }
    if ((e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) && p->complete) {
        /* DEPS.md: `Upgrade: h2c` pauses with HPE_PAUSED_UPGRADE; we ignore
         * the upgrade offer and go on with HTTP/1.1 (next() resumes). */
        const char *pos = llhttp_get_error_pos(&p->ll);
        *used = pos ? (size_t)(pos - data) : len;
        return HTTP_PARSE_REQUEST;
    }
    p->dead = true;
    if (p->err_status == 0) {
        if (e == HPE_UNEXPECTED_CONTENT_LENGTH)
            fail(p, 400, "Both Content-Length and Transfer-Encoding");
        else if (e == HPE_INVALID_METHOD)
            fail(p, 400, "Invalid HTTP method");
        else if (e == HPE_INVALID_VERSION)
            fail(p, 505, "HTTP version not supported");
        else
            fail(p, 400, "Malformed HTTP request");
    }
    return HTTP_PARSE_ERROR;
}

const char *http_req_header(const struct http_req *r, const char *name)
{
    for (size_t i = r->n_headers; i-- > 0;)
        if (strcmp(r->headers[i].name, name) == 0)
            return r->headers[i].value;
    return NULL;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int http_pct_decode(struct pz_buf *out, const char *s, size_t n,
                    bool plus_is_space)
{
    pz_buf_reserve(out, n);
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            int hi, lo;
            if (i + 2 >= n)
                return PZ_EINVAL;
            hi = hexval((unsigned char)s[i + 1]);
            lo = hexval((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0)
                return PZ_EINVAL;
            c = (char)(hi * 16 + lo);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        }
        pz_buf_append(out, &c, 1);
    }
    return 0;
}

int http_url_path(const char *url, size_t urllen, struct pz_buf *path)
{
    const char *q = memchr(url, '?', urllen);
    size_t n = q ? (size_t)(q - url) : urllen;
    const char *hash = memchr(url, '#', n);
    if (hash)
        n = (size_t)(hash - url);
    pz_buf_reset(path);
    int rv = http_pct_decode(path, url, n, false);
    if (rv == 0 && memchr(path->data ? path->data : "", 0, path->len))
        return PZ_EINVAL; /* a NUL byte in a path is never valid */
    if (path->data == NULL)
        pz_buf_append(path, "", 0);
    return rv;
}

int http_query_get(const char *url, size_t urllen, const char *name,
                   char **val, size_t *len)
{
    const char *q = memchr(url, '?', urllen);
    *val = NULL;
    *len = 0;
    if (q == NULL)
        return 0;
    const char *end = url + urllen;
    const char *hash = memchr(q, '#', (size_t)(end - q));
    if (hash)
        end = hash;
    size_t nlen = strlen(name);
    int found = 0;
    struct pz_buf key, v;
    pz_buf_init(&key);
    pz_buf_init(&v);
    for (const char *s = q + 1; s < end;) {
        const char *amp = memchr(s, '&', (size_t)(end - s));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(s, '=', (size_t)(pe - s));
        const char *ke = eq ? eq : pe;
        pz_buf_reset(&key);
        if (http_pct_decode(&key, s, (size_t)(ke - s), true))
            goto err;
        if (key.len == nlen && memcmp(key.data, name, nlen) == 0) {
            /* The first occurrence counts. */
            pz_buf_reset(&v);
            if (eq && http_pct_decode(&v, eq + 1, (size_t)(pe - eq - 1), true))
                goto err;
            found = 1;
            break;
        }
        s = amp ? amp + 1 : end;
    }
    pz_buf_free(&key);
    if (found) {
        *len = v.len;
        *val = pz_memdup(v.data ? v.data : "", v.len);
    }
    pz_buf_free(&v);
    return found;
err:
    pz_buf_free(&key);
    pz_buf_free(&v);
    return PZ_EINVAL;
}

void http_pct_encode(struct pz_buf *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
            (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' || ch == '_' ||
            ch == '~') {
            pz_buf_append(out, &ch, 1);
        } else {
            char e[3] = {'%', hex[ch >> 4], hex[ch & 15]};
            pz_buf_append(out, e, 3);
        }
    }
}

/* --- the key-value API ---------------------------------------------------- */

static void op_error(struct http_op *op, int status, const char *reason)
{
    http_op_free(op);
    op->kind = HTTP_OP_ERROR;
    op->status = status;
    op->reason = reason;
}

static bool method_is(const struct http_req *req, int m)
{
    return req->method == m;
}

/* Key from the query string (GET /get, DELETE /delete). */
static void key_from_query(const struct http_req *req, struct http_op *op)
{
    int rv = http_query_get(req->url.data, req->url.len, "key", &op->key,
                            &op->klen);
    if (rv < 0)
        op_error(op, 400, "Bad percent-encoding in query");
    else if (rv == 0 || op->klen == 0)
        op_error(op, 400, "Missing key parameter");
}

/* Key (and value) from a JSON body (POST /set, POST /delete): an object
 * whose members "key" and "value" are strings, decoded to bytes (\u0000
 * included); other members are ignored, the last of repeated ones counts. */
static void key_from_json(const struct http_req *req, struct http_op *op,
                          bool want_value)
{
    struct json_val root, k, v;
    bool has_k, has_v = false;
    if (json_parse(req->body.data ? req->body.data : "", req->body.len,
                   &root) < 0 ||
        root.type != JSON_OBJECT) {
        op_error(op, 400, "Invalid JSON");
        return;
    }
    has_k = json_get(&root, "key", &k);
    if (want_value)
        has_v = json_get(&root, "value", &v);
    /* The original decoded into Go strings: a non-string key or value was
     * a decoding error, an absent one the empty string. */
    if ((has_k && k.type != JSON_STRING) || (has_v && v.type != JSON_STRING)) {
        op_error(op, 400, "Invalid JSON");
        return;
    }
    if (has_k)
        op->key = json_strdup(&k, &op->klen);
    if (op->key == NULL || op->klen == 0) {
        op_error(op, 400, "Missing key field");
        return;
    }
    if (want_value)
        op->value = has_v ? json_strdup(&v, &op->vlen) : pz_strdup("");
}

void http_api_decode(const struct http_req *req,
                     const struct http_api_limits *lim, struct http_op *op)
{
    struct pz_buf path;
    memset(op, 0, sizeof *op);
    pz_buf_init(&path);
    if (http_url_path(req->url.data ? req->url.data : "", req->url.len,
                      &path) < 0) {
        op_error(op, 400, "Bad request path");
        goto out;
    }
    const char *p = path.data;
    if (strcmp(p, "/get") == 0) {
        if (!method_is(req, HTTP_GET)) {
            op_error(op, 405, "Method not allowed");
            op->allow = "GET";
            goto out;
        }
        op->kind = HTTP_OP_GET;
        key_from_query(req, op);
        if (op->kind == HTTP_OP_GET) {
            char *c;
            size_t cl;
            int rv = http_query_get(req->url.data, req->url.len,
                                    "consistency", &c, &cl);
            if (rv == 1) {
                if (strcmp(c, "stale") == 0)
                    op->stale = true;
                else if (strcmp(c, "linearizable") != 0)
                    op_error(op, 400,
                             "consistency must be linearizable or stale");
                pz_free(c);
            }
        }
    } else if (strcmp(p, "/set") == 0) {
        if (!method_is(req, HTTP_POST)) {
            op_error(op, 405, "Method not allowed");
            op->allow = "POST";
            goto out;
        }
        op->kind = HTTP_OP_SET;
        key_from_json(req, op, true);
    } else if (strcmp(p, "/delete") == 0) {
        op->kind = HTTP_OP_DEL;
        if (method_is(req, HTTP_POST)) {
            key_from_json(req, op, false);
        } else if (method_is(req, HTTP_DELETE)) {
            key_from_query(req, op);
        } else {
            op_error(op, 405, "Method not allowed");
            op->allow = "POST, DELETE";
            goto out;
        }
    } else if (strcmp(p, "/admin/snapshot") == 0) {
        if (!method_is(req, HTTP_POST) && !method_is(req, HTTP_GET)) {
            op_error(op, 405, "Method not allowed");
            op->allow = "GET, POST";
            goto out;
        }
        op->kind = method_is(req, HTTP_GET) ? HTTP_OP_BACKUP : HTTP_OP_SNAPSHOT;
        op->needs_auth = true;
    } else if (strcmp(p, "/cluster") == 0) {
        if (!method_is(req, HTTP_GET)) {
            op_error(op, 405, "Method not allowed");
            op->allow = "GET";
            goto out;
        }
        op->kind = HTTP_OP_CLUSTER;
    } else if (strncmp(p, "/cluster/members/", 17) == 0) {
        if (!method_is(req, HTTP_DELETE)) {
            op_error(op, 405, "Method not allowed");
            op->allow = "DELETE";
            goto out;
        }
        op->kind = HTTP_OP_REMOVE;
        op->needs_auth = true;
        op->klen = strlen(p + 17);
        op->key = pz_strdup(p + 17);
        if (op->klen == 0 || strchr(op->key, '/'))
            op_error(op, 400, "Missing member id");
    } else if (strcmp(p, "/cluster/transfer") == 0) {
        if (!method_is(req, HTTP_POST)) {
            op_error(op, 405, "Method not allowed");
            op->allow = "POST";
            goto out;
        }
        op->kind = HTTP_OP_TRANSFER;
        op->needs_auth = true;
        int rv = http_query_get(req->url.data, req->url.len, "to", &op->key,
                                &op->klen);
        if (rv <= 0 || op->klen == 0 || memchr(op->key, 0, op->klen))
            op_error(op, 400, "Missing to parameter");
    } else if (strcmp(p, "/metrics") == 0) {
        op->kind = HTTP_OP_METRICS;
        if (!method_is(req, HTTP_GET)) {
            op_error(op, 405, "Method not allowed");
            op->allow = "GET";
        }
    } else if (strcmp(p, "/health") == 0 || strcmp(p, "/status") == 0) {
        if (!method_is(req, HTTP_GET)) {
            op_error(op, 405, "Method not allowed");
            op->allow = "GET";
            goto out;
        }
        op->kind = p[1] == 'h' ? HTTP_OP_HEALTH : HTTP_OP_STATUS;
        char *v;
        size_t vl;
        if (op->kind == HTTP_OP_HEALTH &&
            http_query_get(req->url.data, req->url.len, "serializable", &v,
                           &vl) == 1) {
            if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
                op->serializable = true;
            else if (strcmp(v, "false") != 0 && strcmp(v, "0") != 0)
                op_error(op, 400, "serializable must be true or false");
            pz_free(v);
        }
    } else {
        op_error(op, 404, "Not found");
        goto out;
    }
    if (op->kind == HTTP_OP_ERROR)
        goto out;
    if (op->key && op->klen > lim->max_key)
        op_error(op, 413, "Key too large");
    else if (op->value && op->vlen > lim->max_value)
        op_error(op, 413, "Value too large");
out:
    pz_buf_free(&path);
}

void http_op_free(struct http_op *op)
{
    pz_free(op->key);
    pz_free(op->value);
    op->key = NULL;
    op->value = NULL;
    op->klen = op->vlen = 0;
}
