/* http_parse.c - see http_parse.h. Pure: bytes in, requests out. */
#include "http_parse.h"

#include <ctype.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "json.h"
#include "kv.h"

/* Blank lines tolerated before a request without counting as its start
 * (one CRLF after a body, as some old clients send). */
#define BLANK_BYTES_OK 4
/* Buffers above these sizes are freed between requests. */
#define KEEP_BODY_MAX (64 * 1024)
#define KEEP_LINE_MAX (4 * 1024)
/* A header array with room for more entries than this is freed between
 * requests (an ordinary request fits in its first 8 or 16). */
#define KEEP_HEADERS_MAX 16

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

/* n bytes of src into dst with A-Z lowercased (ASCII: a name is a
 * token), eight at a time: per byte, its top bit set when it is in A-Z
 * (below 0x80, at least 'A', not past 'Z') becomes the 0x20 added. */
static void lower_ascii(char *dst, const char *src, size_t n)
{
    const uint64_t ones = 0x0101010101010101ull, tops = 0x8080808080808080ull;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x, low;
        memcpy(&x, src + i, 8);
        low = x & ~tops;
        uint64_t ge_a = low + (0x80 - 'A') * ones;
        uint64_t gt_z = low + (0x7f - 'Z') * ones;
        x |= ((ge_a ^ gt_z) & ~x & tops) >> 2;
        memcpy(dst + i, &x, 8);
    }
    for (; i < n; i++) {
        char c = src[i];
        dst[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
    }
}

/* A header's name and value are written straight into hdr_text as their
 * bytes arrive (llhttp may hand them over in several spans): the name
 * lowercased, then a NUL once it is complete, then the value. */
static int on_header_field(llhttp_t *ll, const char *at, size_t n)
{
    struct http_parser *p = parser_of(ll);
    if (count_header_bytes(p, n))
        return -1;
    struct pz_buf *t = &p->hdr_text;
    if (p->hdr_state == HDR_NONE) {
        p->hdr_state = HDR_NAME;
        p->hdr_start = t->len;
    }
    pz_buf_reserve(t, n);
    lower_ascii(t->data + t->len, at, n);
    t->len += n;
    t->data[t->len] = '\0';
    return 0;
}

static int on_header_field_complete(llhttp_t *ll)
{
    struct http_parser *p = parser_of(ll);
    if (p->hdr_state == HDR_NAME) {
        p->hdr_state = HDR_VALUE;
        p->hdr_value = p->hdr_text.len + 1; /* past the name's NUL */
        pz_buf_append(&p->hdr_text, "", 1);
    }
    return 0;
}

static int on_header_value(llhttp_t *ll, const char *at, size_t n)
{
    struct http_parser *p = parser_of(ll);
    if (count_header_bytes(p, n))
        return -1;
    if (p->hdr_state == HDR_VALUE)
        pz_buf_append(&p->hdr_text, at, n);
    return 0;
}

/* The header in progress is complete: keep it in req.headers. */
static int finish_header(struct http_parser *p)
{
    if (p->hdr_state != HDR_VALUE) {
        /* Nothing, or a name without its value (not from llhttp). */
        if (p->hdr_state == HDR_NAME)
            p->hdr_text.len = p->hdr_start;
        p->hdr_state = HDR_NONE;
        return 0;
    }
    p->hdr_state = HDR_NONE;
    if (p->req.n_headers >= p->lim.max_headers)
        return fail(p, 431, "Too many header fields");
    struct pz_buf *t = &p->hdr_text;
    size_t nl = p->hdr_value - 1 - p->hdr_start, vl = t->len - p->hdr_value;
    if (memchr(t->data + p->hdr_value, 0, vl))
        return fail(p, 400, "Bad header value");
    struct http_header *h;
    if (p->req.n_headers == p->cap_headers) {
        /* The array stays from request to request (req_clear keeps it). */
        p->cap_headers = p->cap_headers ? 2 * p->cap_headers : 8;
        p->req.headers = pz_realloc(p->req.headers,
                                    p->cap_headers * sizeof *p->req.headers);
    }
    h = &p->req.headers[p->req.n_headers++];
    p->headers_held += sizeof *h; /* its strings: hdr_text */
    /* Names and values lie back to back in one buffer kept from request
     * to request (no allocation per header); their pointers are set once
     * the block is complete (point_headers), the buffer may move before. */
    pz_buf_append(t, "", 1); /* the value's NUL */
    h->name = h->value = NULL;
    h->nlen = nl;
    h->vlen = vl;
    return 0;
}

/* Point each header at its name and value in hdr_text, where they lie
 * in order, each followed by a NUL. */
static void point_headers(struct http_parser *p)
{
    char *c = p->hdr_text.data;
    for (size_t i = 0; i < p->req.n_headers; i++) {
        struct http_header *h = &p->req.headers[i];
        h->name = c;
        c += h->nlen + 1;
        h->value = c;
        c += h->vlen + 1;
    }
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
    point_headers(p);
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
    point_headers(p); /* trailers may have moved them */
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
    p->settings.on_header_field_complete = on_header_field_complete;
    p->settings.on_header_value = on_header_value;
    p->settings.on_header_value_complete = on_header_value_complete;
    p->settings.on_headers_complete = on_headers_complete;
    p->settings.on_chunk_header = on_chunk_header;
    p->settings.on_body = on_body;
    p->settings.on_message_complete = on_message_complete;
    llhttp_init(&p->ll, HTTP_REQUEST, &p->settings);
    pz_buf_init(&p->req.url);
    pz_buf_init(&p->req.body);
    pz_buf_init(&p->hdr_text);
}

static void req_clear(struct http_req *r)
{
    r->n_headers = 0;
    pz_buf_reset(&r->url);
    pz_buf_reset(&r->body);
    r->method = 0;
    r->keep_alive = false;
}

void http_parser_free(struct http_parser *p)
{
    req_clear(&p->req);
    pz_free(p->req.headers);
    p->req.headers = NULL;
    p->cap_headers = 0;
    pz_buf_free(&p->req.url);
    pz_buf_free(&p->req.body);
    pz_buf_free(&p->hdr_text);
}

void http_parser_next(struct http_parser *p)
{
    req_clear(&p->req);
    pz_buf_trim(&p->req.body, KEEP_BODY_MAX);
    pz_buf_trim(&p->req.url, KEEP_LINE_MAX);
    pz_buf_trim(&p->hdr_text, KEEP_LINE_MAX);
    if (p->cap_headers > KEEP_HEADERS_MAX) {
        pz_free(p->req.headers);
        p->req.headers = NULL;
        p->cap_headers = 0;
    }
    p->hdr_state = HDR_NONE;
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
    return p->req.url.cap + p->req.body.cap + p->hdr_text.cap +
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

bool http_bearer_value(const char **v, size_t *n)
{
    const char *p = *v, *end = *v + *n;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    if (end - p < 7 || strncasecmp(p, "bearer", 6) != 0 ||
        (p[6] != ' ' && p[6] != '\t'))
        return false;
    p += 6;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    if (p == end)
        return false;
    *v = p;
    *n = (size_t)(end - p);
    return true;
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
    size_t i = 0;
    while (i < n) {
        /* A run with nothing to decode is copied whole. */
        size_t run = i;
        while (run < n && s[run] != '%' && (s[run] != '+' || !plus_is_space))
            run++;
        pz_buf_append(out, s + i, run - i);
        if (run == n)
            break;
        i = run;
        char c = ' '; /* a '+' */
        if (s[i] == '%') {
            int hi, lo;
            if (i + 2 >= n)
                return PZ_EINVAL;
            hi = hexval((unsigned char)s[i + 1]);
            lo = hexval((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0)
                return PZ_EINVAL;
            c = (char)(hi * 16 + lo);
            i += 2;
        }
        pz_buf_append(out, &c, 1);
        i++;
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

/* --- base64, UTF-8 ----------------------------------------------------------
 */

static const char b64chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void http_b64_encode(struct pz_buf *out, const void *p, size_t n)
{
    /* Reserved once and written in place: values run to megabytes. */
    const uint8_t *b = p;
    pz_buf_reserve(out, (n + 2) / 3 * 4);
    char *o = out->data + out->len;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)b[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)b[i + 1] << 8;
        if (i + 2 < n)
            v |= b[i + 2];
        *o++ = b64chars[v >> 18];
        *o++ = b64chars[(v >> 12) & 63];
        *o++ = i + 1 < n ? b64chars[(v >> 6) & 63] : '=';
        *o++ = i + 2 < n ? b64chars[v & 63] : '=';
    }
    out->len = (size_t)(o - out->data);
    out->data[out->len] = '\0';
}

/* Bytes a JSON string takes for c beyond c itself: 1 for a quote or a
 * backslash (\" \\), 5 for a control character (\u00XX), else 0. */
static size_t json_escape_extra(uint8_t c)
{
    if (c == '"' || c == '\\')
        return 1;
    return c < 0x20 ? 5 : 0;
}

void http_json_str(struct pz_buf *out, const void *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const uint8_t *s = p;
    /* Measured first, then reserved once and written in place: one append
     * per escaped byte made a value of control characters cost a call
     * (and a bounds check) per byte. */
    size_t extra = 0;
    for (size_t i = 0; i < n; i++)
        extra += json_escape_extra(s[i]);
    pz_buf_reserve(out, n + extra + 2);
    char *o = out->data + out->len;
    *o++ = '"';
    if (extra == 0) {
        if (n)
            memcpy(o, s, n);
        o += n;
    } else {
        for (size_t i = 0; i < n; i++) {
            uint8_t c = s[i];
            size_t x = json_escape_extra(c);
            if (x == 0) {
                *o++ = (char)c;
            } else if (x == 1) {
                *o++ = '\\';
                *o++ = (char)c;
            } else {
                memcpy(o, "\\u00", 4);
                o[4] = hex[c >> 4];
                o[5] = hex[c & 15];
                o += 6;
            }
        }
    }
    *o++ = '"';
    out->len = (size_t)(o - out->data);
    out->data[out->len] = '\0';
}

static int b64_val(char c)
{
    const char *p = c ? strchr(b64chars, c) : NULL;
    return p ? (int)(p - b64chars) : -1;
}

int http_b64_decode(struct pz_buf *out, const char *s, size_t n)
{
    if (n % 4)
        return PZ_EINVAL;
    for (size_t i = 0; i < n; i += 4) {
        int pad = 0;
        uint32_t v = 0;
        for (int j = 0; j < 4; j++) {
            char c = s[i + j];
            int d;
            if (c == '=' && i + 4 == n && j >= 2) {
                pad++;
                d = 0;
            } else {
                if (pad)
                    return PZ_EINVAL; /* data after padding */
                d = b64_val(c);
                if (d < 0)
                    return PZ_EINVAL;
            }
            v = v << 6 | (uint32_t)d;
        }
        uint8_t b[3] = {(uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
        /* Bits under the padding must be zero (one encoding per input). */
        if ((pad == 1 && b[2]) || (pad == 2 && (b[1] || b[2])))
            return PZ_EINVAL;
        pz_buf_append(out, b, (size_t)(3 - pad));
    }
    return 0;
}

bool http_parse_revision(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 20)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (KV_REVISION_MAX - d) / 10)
            return false; /* past the highest, never wrapped */
        v = v * 10 + d;
    }
    *out = v;
    return true;
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

/* Members cond_from_json looks for: a body with none of them is a plain
 * set or delete, which need not be read again. */
static const char *const cond_names[] = {
    "lease", "prev_revision", "prev_value", "prev_value_b64", "prefix",
    "prefix_b64"};

static bool is_cond_name(const struct json_val *name)
{
    for (size_t i = 0; i < PZ_ARRAY_SIZE(cond_names); i++)
        if (json_str_is(name, cond_names[i], strlen(cond_names[i])))
            return true;
    return false;
}

/* The members key_from_json looks at, as the last of each name. */
struct key_members {
    struct json_val k, v; /* "key", "value" */
    bool has_k, has_v;    /* found */
    bool cond;            /* one of cond_names is there */
};

static void key_member(struct key_members *km, const struct json_val *name,
                       const struct json_val *val, bool want_value)
{
    if (json_str_is(name, "key", 3)) {
        km->k = *val;
        km->has_k = true;
    } else if (want_value && json_str_is(name, "value", 5)) {
        km->v = *val;
        km->has_v = true;
    } else if (!km->cond) {
        km->cond = is_cond_name(name);
    }
}

/* Members of a body json_flat() reads; more go the general way. */
#define FLAT_MAX 8

/* Key (and value) from a JSON body (POST /set, POST /delete): an object
 * whose members "key" and "value" are strings, decoded to bytes (\u0000
 * included); other members are ignored, the last of repeated ones counts.
 * One walk over the members (one pass in all for the usual body of plain
 * strings); returns whether the body holds one of cond_names (false for a
 * body that is not a JSON object). */
static bool key_from_json(const struct http_req *req, struct http_op *op,
                          bool want_value)
{
    struct json_val root, name, val;
    struct json_val names[FLAT_MAX], vals[FLAT_MAX];
    struct key_members km = {0};
    const char *body = req->body.data ? req->body.data : "";
    int n = json_flat(body, req->body.len, names, vals, FLAT_MAX);
    if (n >= 0) {
        for (int i = 0; i < n; i++)
            key_member(&km, &names[i], &vals[i], want_value);
    } else {
        struct json_iter it;
        if (json_parse(body, req->body.len, &root) < 0 ||
            root.type != JSON_OBJECT) {
            op_error(op, 400, "Invalid JSON");
            return false;
        }
        json_iter_init(&it, &root);
        while (json_iter_next(&it, &name, &val))
            key_member(&km, &name, &val, want_value);
    }
    /* The original decoded into Go strings: a non-string key or value was
     * a decoding error, an absent one the empty string. */
    if ((km.has_k && km.k.type != JSON_STRING) ||
        (km.has_v && km.v.type != JSON_STRING)) {
        op_error(op, 400, "Invalid JSON");
        return km.cond;
    }
    if (km.has_k)
        op->key = json_strdup(&km.k, &op->klen);
    if (op->key == NULL || op->klen == 0) {
        op_error(op, 400, "Missing key field");
        return km.cond;
    }
    if (want_value)
        op->value = km.has_v ? json_strdup(&km.v, &op->vlen) : pz_strdup("");
    return km.cond;
}

/* Strings decoded for one command, freed once it is encoded. */
struct strs {
    char **v; /* pz_malloc'd strings */
    size_t n; /* how many */
};

static char *strs_keep(struct strs *st, char *p)
{
    st->v = pz_realloc(st->v, (st->n + 1) * sizeof *st->v);
    st->v[st->n++] = p;
    return p;
}

static void strs_free(struct strs *st)
{
    for (size_t i = 0; i < st->n; i++)
        pz_free(st->v[i]);
    pz_free(st->v);
    st->v = NULL;
    st->n = 0;
}

/* Member `name` of obj as bytes: a JSON string, or base64 in
 * "<name>_b64". 1 found (*p kept in st), 0 absent, -1 with *why set. */
static int bytes_member(const struct json_val *obj, const char *name,
                        size_t max, struct strs *st, const uint8_t **p,
                        size_t *n, const char **why)
{
    struct json_val v;
    char b64name[32];
    snprintf(b64name, sizeof b64name, "%s_b64", name);
    bool plain = json_get(obj, name, &v);
    struct json_val bv;
    bool b64 = json_get(obj, b64name, &bv);
    if (plain && b64) {
        *why = "Give a field either as a string or as _b64, not both";
        return -1;
    }
    if (!plain && !b64)
        return 0;
    if ((plain ? v.type : bv.type) != JSON_STRING) {
        *why = "Invalid JSON: keys and values are strings";
        return -1;
    }
    if (plain) {
        *p = (const uint8_t *)strs_keep(st, json_strdup(&v, n));
    } else {
        struct pz_buf raw, dec;
        pz_buf_init(&raw);
        pz_buf_init(&dec);
        json_str(&bv, &raw);
        int rc = http_b64_decode(&dec, raw.data ? raw.data : "", raw.len);
        pz_buf_free(&raw);
        if (rc) {
            pz_buf_free(&dec);
            *why = "Bad base64 in a _b64 field";
            return -1;
        }
        *n = dec.len;
        *p = (const uint8_t *)strs_keep(
            st, pz_memdup(dec.data ? dec.data : "", dec.len));
        pz_buf_free(&dec);
    }
    if (*n > max) {
        *why = "Key or value too large";
        return -1;
    }
    return 1;
}

/* A range given as "prefix", or "from" and optional "to" (JSON), into
 * op's key, value (end) and flags. */
static int range_member(const struct json_val *obj, size_t max_key,
                        struct strs *st, struct kv_op *o, const char **why)
{
    const uint8_t *pre, *from, *to;
    size_t plen, flen, tlen;
    int hp = bytes_member(obj, "prefix", max_key, st, &pre, &plen, why);
    int hf = bytes_member(obj, "from", max_key, st, &from, &flen, why);
    int ht = bytes_member(obj, "to", max_key, st, &to, &tlen, why);
    if (hp < 0 || hf < 0 || ht < 0)
        return -1;
    if (hp && (hf || ht)) {
        *why = "Give prefix or from/to, not both";
        return -1;
    }
    if (hp) {
        uint8_t *end = (uint8_t *)strs_keep(st, pz_malloc(plen + 1));
        long el = kv_prefix_end(pre, plen, end);
        o->key = pre;
        o->klen = plen;
        if (el < 0) {
            o->flags |= KV_RANGE_TO_END;
        } else {
            o->value = end;
            o->vlen = (size_t)el;
        }
        return 0;
    }
    if (!hf) {
        *why = "A range needs prefix or from";
        return -1;
    }
    o->key = from;
    o->klen = flen;
    if (ht) {
        o->value = to;
        o->vlen = tlen;
    } else {
        o->flags |= KV_RANGE_TO_END;
    }
    return 0;
}

static int bool_member(const struct json_val *obj, const char *name, bool *out,
                       const char **why)
{
    struct json_val v;
    if (!json_get(obj, name, &v))
        return 0;
    if (v.type != JSON_TRUE && v.type != JSON_FALSE) {
        *why = "Invalid JSON: flags are true or false";
        return -1;
    }
    *out = v.type == JSON_TRUE;
    return 0;
}

/* One operation of a /txn branch: {"put": {...}} and friends. */
static int txn_op(const struct json_val *item,
                  const struct http_api_limits *lim, struct strs *st,
                  struct kv_op *o, const char **why)
{
    static const char *const names[] = {"put", "delete", "delete_range", "get",
                                        "range"};
    static const int types[] = {KV_TOP_PUT, KV_TOP_DEL, KV_TOP_DELRANGE,
                                KV_TOP_GET, KV_TOP_RANGE};
    struct json_val body;
    int found = -1;
    memset(o, 0, sizeof *o);
    if (item->type != JSON_OBJECT) {
        *why = "Invalid JSON: an operation is an object";
        return -1;
    }
    for (int i = 0; i < 5; i++) {
        struct json_val v;
        if (json_get(item, names[i], &v)) {
            if (found >= 0) {
                *why = "An operation names one of put, delete, "
                       "delete_range, get, range";
                return -1;
            }
            found = i;
            body = v;
        }
    }
    if (found < 0 || body.type != JSON_OBJECT) {
        *why = "An operation is {\"put\"|\"delete\"|\"delete_range\"|\"get\"|"
               "\"range\": {...}}";
        return -1;
    }
    o->type = types[found];
    if (o->type == KV_TOP_DELRANGE || o->type == KV_TOP_RANGE) {
        if (range_member(&body, lim->max_key, st, o, why) < 0)
            return -1;
        if (o->type == KV_TOP_RANGE) {
            bool ko = false, co = false;
            struct json_val lv;
            if (bool_member(&body, "keys_only", &ko, why) < 0 ||
                bool_member(&body, "count_only", &co, why) < 0)
                return -1;
            o->flags |=
                (ko ? KV_RANGE_KEYS_ONLY : 0) | (co ? KV_RANGE_COUNT_ONLY : 0);
            o->limit = HTTP_RANGE_LIMIT;
            if (json_get(&body, "limit", &lv) &&
                (json_u64(&lv, &o->limit) < 0 || o->limit == 0 ||
                 o->limit > HTTP_RANGE_LIMIT_MAX)) {
                *why = "limit must be an integer from 1 to 10000";
                return -1;
            }
        }
        return 0;
    }
    int hk =
        bytes_member(&body, "key", lim->max_key, st, &o->key, &o->klen, why);
    if (hk < 0)
        return -1;
    if (hk == 0 || o->klen == 0) {
        *why = "Missing key field";
        return -1;
    }
    if (o->type == KV_TOP_PUT) {
        int hv = bytes_member(&body, "value", lim->max_value, st, &o->value,
                              &o->vlen, why);
        if (hv < 0)
            return -1;
        if (hv == 0)
            o->value = (const uint8_t *)"";
        struct json_val lv;
        if (json_get(&body, "lease", &lv) &&
            (json_u64(&lv, &o->lease) < 0 || o->lease > KV_LEASE_ID_MAX)) {
            *why = "lease must be a lease id (an integer from 1 to 2^53 - 1), "
                   "or 0 for none";
            return -1;
        }
    }
    return 0;
}

static int txn_cmp(const struct json_val *item,
                   const struct http_api_limits *lim, struct strs *st,
                   struct kv_cmp *c, const char **why)
{
    static const char *const targets[] = {"value", "version", "create_revision",
                                          "mod_revision", "lease"};
    static const char *const results[] = {"=", "!=", "<", ">"};
    struct json_val t, r, v;
    memset(c, 0, sizeof *c);
    if (item->type != JSON_OBJECT) {
        *why = "Invalid JSON: a comparison is an object";
        return -1;
    }
    int hk =
        bytes_member(item, "key", lim->max_key, st, &c->key, &c->klen, why);
    if (hk < 0)
        return -1;
    if (hk == 0 || c->klen == 0) {
        *why = "Missing key field";
        return -1;
    }
    c->target = c->result = -1;
    if (json_get(item, "target", &t) && t.type == JSON_STRING)
        for (int i = 0; i < 5; i++)
            if (json_str_is(&t, targets[i], strlen(targets[i])))
                c->target = i;
    if (json_get(item, "result", &r) && r.type == JSON_STRING)
        for (int i = 0; i < 4; i++)
            if (json_str_is(&r, results[i], strlen(results[i])))
                c->result = i;
    if (c->target < 0) {
        *why = "target must be value, version, create_revision, "
               "mod_revision or lease";
        return -1;
    }
    if (c->result < 0) {
        *why = "result must be =, !=, < or >";
        return -1;
    }
    if (c->target == KV_CMP_VALUE) {
        int hv = bytes_member(item, "value", lim->max_value, st, &c->value,
                              &c->vlen, why);
        if (hv < 0)
            return -1;
        if (hv == 0) {
            *why = "A value comparison needs value";
            return -1;
        }
        return 0;
    }
    if (!json_get(item, "value", &v) || json_u64(&v, &c->num) < 0) {
        *why = "A number comparison needs value, a non-negative integer";
        return -1;
    }
    return 0;
}

/* POST /txn: {"compare": [...], "success": [...], "failure": [...]}. */
static void txn_from_json(const struct http_req *req,
                          const struct http_api_limits *lim, struct http_op *op)
{
    struct json_val root, arr, item;
    struct strs st = {0};
    struct kv_cmp *cmps = pz_calloc(KV_TXN_MAX, sizeof *cmps);
    struct kv_op *ops[2] = {pz_calloc(KV_TXN_MAX, sizeof(struct kv_op)),
                            pz_calloc(KV_TXN_MAX, sizeof(struct kv_op))};
    size_t n[3] = {0, 0, 0};
    static const char *const lists[] = {"compare", "success", "failure"};
    const char *why = NULL;
    if (json_parse(req->body.data ? req->body.data : "", req->body.len, &root) <
            0 ||
        root.type != JSON_OBJECT) {
        why = "Invalid JSON";
        goto out;
    }
    for (int l = 0; l < 3 && !why; l++) {
        if (!json_get(&root, lists[l], &arr))
            continue;
        if (arr.type != JSON_ARRAY) {
            why = "Invalid JSON: compare, success and failure are arrays";
            break;
        }
        struct json_iter it;
        json_iter_init(&it, &arr);
        while (!why && json_iter_next(&it, NULL, &item)) {
            if (n[l] == KV_TXN_MAX) {
                why = "Too many comparisons or operations (at most 128 each)";
                break;
            }
            if (l == 0)
                txn_cmp(&item, lim, &st, &cmps[n[0]], &why);
            else
                txn_op(&item, lim, &st, &ops[l - 1][n[l]], &why);
            n[l]++;
        }
    }
    if (!why &&
        kv_encode_txn(&op->cmd, cmps, n[0], ops[0], n[1], ops[1], n[2]) < 0)
        why = "Invalid transaction";
out:
    if (why)
        op_error(op, 400, why);
    strs_free(&st);
    pz_free(cmps);
    pz_free(ops[0]);
    pz_free(ops[1]);
}

/* /set and POST /delete with "prev_revision" (0: must not exist) and/or
 * "prev_value", or /delete with "prefix": turned into a transaction. The
 * failure branch reads the key, for the 412 answer. Leaves op alone (a
 * plain set or delete) when there is none of them. */
static void cond_from_json(const struct http_req *req,
                           const struct http_api_limits *lim,
                           struct http_op *op, bool is_set)
{
    struct json_val root, rv;
    struct strs st = {0};
    const char *why = NULL;
    if (json_parse(req->body.data ? req->body.data : "", req->body.len, &root) <
        0)
        return; /* key_from_json answered already */
    struct json_val lv;
    if (is_set && op->kind == HTTP_OP_SET && json_get(&root, "lease", &lv) &&
        (json_u64(&lv, &op->lease) < 0 || op->lease > KV_LEASE_ID_MAX)) {
        op_error(op, 400, "lease must be a lease id (an integer from 1 to "
                          "2^53 - 1), or 0 for none");
        return;
    }
    bool has_rev = json_get(&root, "prev_revision", &rv);
    const uint8_t *pv;
    size_t pvl;
    int has_val =
        bytes_member(&root, "prev_value", lim->max_value, &st, &pv, &pvl, &why);
    struct kv_op pre = {0};
    int has_pre = 0;
    if (!is_set) {
        struct json_val pj;
        if (json_get(&root, "prefix", &pj) ||
            json_get(&root, "prefix_b64", &pj)) {
            has_pre = 1;
            pre.type = KV_TOP_DELRANGE;
            if (range_member(&root, lim->max_key, &st, &pre, &why) < 0)
                has_pre = -1;
        }
    }
    if (has_val < 0 || has_pre < 0)
        goto err;
    if (!has_rev && !has_val && !has_pre) {
        strs_free(&st);
        return;
    }
    if (has_pre) {
        if (op->kind != HTTP_OP_ERROR) {
            why = "Give key or prefix, not both";
            goto err;
        }
        if (has_rev || has_val) {
            why = "A prefix delete takes no conditions (use /txn)";
            goto err;
        }
        http_op_free(op);
        op->kind = HTTP_OP_TXN;
        op->txn_kind = HTTP_TXN_DELPREFIX;
        kv_encode_txn(&op->cmd, NULL, 0, &pre, 1, NULL, 0);
        strs_free(&st);
        return;
    }
    if (op->kind == HTTP_OP_ERROR)
        goto out; /* the key was missing: that answer stands */
    struct kv_cmp cmps[2];
    size_t nc = 0;
    if (has_rev) {
        uint64_t r;
        if (json_u64(&rv, &r) < 0) {
            why = "prev_revision must be a non-negative integer";
            goto err;
        }
        cmps[nc++] = (struct kv_cmp){
            .target = r == 0 ? KV_CMP_CREATE : KV_CMP_MOD,
            .result = KV_CMP_EQ,
            .key = (const uint8_t *)op->key,
            .klen = op->klen,
            .num = r,
        };
    }
    if (has_val)
        cmps[nc++] = (struct kv_cmp){.target = KV_CMP_VALUE,
                                     .result = KV_CMP_EQ,
                                     .key = (const uint8_t *)op->key,
                                     .klen = op->klen,
                                     .value = pv,
                                     .vlen = pvl};
    struct kv_op w = {.type = is_set ? KV_TOP_PUT : KV_TOP_DEL,
                      .key = (const uint8_t *)op->key,
                      .klen = op->klen,
                      .value = (const uint8_t *)(is_set ? op->value : NULL),
                      .vlen = is_set ? op->vlen : 0,
                      .lease = is_set ? op->lease : 0};
    struct kv_op g = {
        .type = KV_TOP_GET, .key = (const uint8_t *)op->key, .klen = op->klen};
    if (is_set && op->vlen > lim->max_value) {
        why = "Value too large";
        goto err;
    }
    kv_encode_txn(&op->cmd, cmps, nc, &w, 1, &g, 1);
    op->kind = HTTP_OP_TXN;
    op->txn_kind = is_set ? HTTP_TXN_SET : HTTP_TXN_DEL;
    goto out;
err:
    op_error(op, 400, why);
out:
    strs_free(&st);
}

/* GET /range: prefix=P, or from=A [to=B]; limit, keys_only, count_only,
 * consistency. Query values are percent-decoded bytes. */
static void range_from_query(const struct http_req *req, struct http_op *op)
{
    const char *u = req->url.data ? req->url.data : "";
    size_t ul = req->url.len;
    char *pre = NULL, *from = NULL, *to = NULL, *v = NULL;
    size_t plen = 0, flen = 0, tlen = 0, vl;
    int hp = http_query_get(u, ul, "prefix", &pre, &plen);
    int hf = http_query_get(u, ul, "from", &from, &flen);
    int ht = http_query_get(u, ul, "to", &to, &tlen);
    op->kind = HTTP_OP_RANGE;
    op->limit = HTTP_RANGE_LIMIT;
    if (hp < 0 || hf < 0 || ht < 0) {
        op_error(op, 400, "Bad percent-encoding in query");
        goto out;
    }
    if (hp == 0 && hf == 0) {
        op_error(op, 400, "Missing prefix or from parameter");
        goto out;
    }
    if (hp && ht) {
        op_error(op, 400, "Give prefix or from/to, not both");
        goto out;
    }
    if (hp) {
        /* from= may move the start inside the prefix (continuation). */
        uint8_t *end = pz_malloc(plen + 1);
        long el = kv_prefix_end(pre, plen, end);
        if (el < 0) {
            op->to_end = true;
            pz_free(end);
        } else {
            op->end = (char *)end;
            op->elen = (size_t)el;
        }
        if (hf && !(flen >= plen && memcmp(from, pre, plen) == 0)) {
            op_error(op, 400, "from must lie inside the prefix");
            goto out;
        }
        if (hf) {
            op->key = from;
            op->klen = flen;
            from = NULL;
        } else {
            op->key = pre;
            op->klen = plen;
            pre = NULL;
        }
    } else {
        op->key = from;
        op->klen = flen;
        from = NULL;
        if (ht) {
            op->end = to;
            op->elen = tlen;
            to = NULL;
        } else {
            op->to_end = true;
        }
    }
    if (http_query_get(u, ul, "limit", &v, &vl) == 1) {
        char *e;
        unsigned long long l = strtoull(v, &e, 10);
        if (vl == 0 || *e || v[0] == '-' || v[0] == '+' || l == 0 ||
            l > HTTP_RANGE_LIMIT_MAX) {
            op_error(op, 400, "limit must be an integer from 1 to 10000");
            goto out;
        }
        op->limit = l;
        pz_free(v);
        v = NULL;
    }
    static const char *const flags[] = {"keys_only", "count_only"};
    for (int i = 0; i < 2; i++) {
        if (http_query_get(u, ul, flags[i], &v, &vl) != 1)
            continue;
        bool on;
        if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0) {
            on = true;
        } else if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0) {
            on = false;
        } else {
            op_error(op, 400, "keys_only and count_only are true or false");
            goto out;
        }
        if (i == 0)
            op->keys_only = on;
        else
            op->count_only = on;
        pz_free(v);
        v = NULL;
    }
    if (http_query_get(u, ul, "consistency", &v, &vl) == 1) {
        if (strcmp(v, "stale") == 0)
            op->stale = true;
        else if (strcmp(v, "linearizable") != 0)
            op_error(op, 400, "consistency must be linearizable or stale");
    }
out:
    pz_free(pre);
    pz_free(from);
    pz_free(to);
    pz_free(v);
}

/* A lease id: a JSON integer from 1 to KV_LEASE_ID_MAX. */
static bool lease_id_of(const struct json_val *v, uint64_t *id)
{
    return json_u64(v, id) == 0 && *id >= 1 && *id <= KV_LEASE_ID_MAX;
}

/* POST /lease/grant {"ttl": N[, "id": ID]}, /lease/keepalive and
 * /lease/revoke {"id": ID}. */
static void lease_from_json(const struct http_req *req, struct http_op *op)
{
    struct json_val root, v;
    if (json_parse(req->body.data ? req->body.data : "", req->body.len,
                   &root) < 0 ||
        root.type != JSON_OBJECT) {
        op_error(op, 400, "Invalid JSON");
        return;
    }
    bool has_id = json_get(&root, "id", &v);
    if (has_id && !lease_id_of(&v, &op->lease_id)) {
        op_error(op, 400, "id must be an integer from 1 to 2^53 - 1");
        return;
    }
    if (op->kind != HTTP_OP_LEASE_GRANT) {
        if (!has_id)
            op_error(op, 400, "Missing id field");
        return;
    }
    if (!json_get(&root, "ttl", &v) || json_u64(&v, &op->lease_ttl) < 0 ||
        op->lease_ttl == 0 || op->lease_ttl > KV_LEASE_TTL_MAX)
        op_error(op, 400, "ttl must be a number of seconds from 1 to "
                          "315360000");
}

/* GET /lease?id=ID[&keys=true]. */
static void lease_from_query(const struct http_req *req, struct http_op *op)
{
    char *v = NULL;
    size_t vl;
    int rv = http_query_get(req->url.data, req->url.len, "id", &v, &vl);
    char *end = NULL;
    if (rv == 1 && vl > 0 && vl < 20 && v[0] >= '0' && v[0] <= '9')
        op->lease_id = strtoull(v, &end, 10);
    if (rv < 1 || end == NULL || *end != '\0' || op->lease_id == 0 ||
        op->lease_id > KV_LEASE_ID_MAX) {
        op_error(op, 400, "id must be an integer from 1 to 2^53 - 1");
        goto out;
    }
    pz_free(v);
    v = NULL;
    if (http_query_get(req->url.data, req->url.len, "keys", &v, &vl) == 1) {
        if (strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
            op->keys_only = true;
        else if (strcmp(v, "false") != 0 && strcmp(v, "0") != 0)
            op_error(op, 400, "keys must be true or false");
    }
out:
    pz_free(v);
}

/* The request's path as http_url_path() gives it (NUL-terminated): in
 * small (cap bytes) when it needs no decoding and fits, as every route of
 * the API does, else in big. NULL for a path http_url_path() refuses. */
static const char *api_path(const struct http_req *req, char *small,
                            size_t cap, struct pz_buf *big)
{
    const char *url = req->url.data ? req->url.data : "";
    size_t n = 0, len = req->url.len;
    while (n < len && url[n] != '?' && url[n] != '#' && url[n] != '%' &&
           url[n] != '\0')
        n++;
    if (n < cap && (n == len || url[n] == '?' || url[n] == '#')) {
        memcpy(small, url, n);
        small[n] = '\0';
        return small;
    }
    if (http_url_path(url, req->url.len, big) < 0)
        return NULL;
    return big->data;
}

void http_api_decode(const struct http_req *req,
                     const struct http_api_limits *lim, struct http_op *op)
{
    struct pz_buf path;
    char small[64];
    memset(op, 0, sizeof *op);
    pz_buf_init(&path);
    const char *p = api_path(req, small, sizeof small, &path);
    if (p == NULL) {
        op_error(op, 400, "Bad request path");
        goto out;
    }
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
        if (key_from_json(req, op, true) && op->kind == HTTP_OP_SET)
            cond_from_json(req, lim, op, true);
    } else if (strcmp(p, "/delete") == 0) {
        op->kind = HTTP_OP_DEL;
        if (method_is(req, HTTP_POST)) {
            bool cond = key_from_json(req, op, false);
            /* A prefix delete has no key: its answer replaces that 400. */
            if (cond && (op->kind == HTTP_OP_DEL || op->status == 400))
                cond_from_json(req, lim, op, false);
        } else if (method_is(req, HTTP_DELETE)) {
            key_from_query(req, op);
        } else {
            op_error(op, 405, "Method not allowed");
            op->allow = "POST, DELETE";
            goto out;
        }
    } else if (strcmp(p, "/range") == 0) {
        if (!method_is(req, HTTP_GET)) {
            op_error(op, 405, "Method not allowed");
            op->allow = "GET";
            goto out;
        }
        range_from_query(req, op);
    } else if (strcmp(p, "/watch") == 0) {
        if (!method_is(req, HTTP_GET)) {
            op_error(op, 405, "Method not allowed");
            op->allow = "GET";
            goto out;
        }
        op->kind = HTTP_OP_WATCH;
    } else if (strcmp(p, "/txn") == 0) {
        if (!method_is(req, HTTP_POST)) {
            op_error(op, 405, "Method not allowed");
            op->allow = "POST";
            goto out;
        }
        op->kind = HTTP_OP_TXN;
        op->txn_kind = HTTP_TXN_JSON;
        txn_from_json(req, lim, op);
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
    } else if (strcmp(p, "/lease/grant") == 0 ||
               strcmp(p, "/lease/keepalive") == 0 ||
               strcmp(p, "/lease/revoke") == 0) {
        if (!method_is(req, HTTP_POST)) {
            op_error(op, 405, "Method not allowed");
            op->allow = "POST";
            goto out;
        }
        op->kind = p[7] == 'g'   ? HTTP_OP_LEASE_GRANT
                   : p[7] == 'k' ? HTTP_OP_LEASE_KEEPALIVE
                                 : HTTP_OP_LEASE_REVOKE;
        lease_from_json(req, op);
    } else if (strcmp(p, "/lease") == 0 || strcmp(p, "/leases") == 0) {
        if (!method_is(req, HTTP_GET)) {
            op_error(op, 405, "Method not allowed");
            op->allow = "GET";
            goto out;
        }
        op->kind = p[6] == 's' ? HTTP_OP_LEASE_LIST : HTTP_OP_LEASE_GET;
        if (op->kind == HTTP_OP_LEASE_GET)
            lease_from_query(req, op);
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
    if (op->key && op->klen > lim->max_key && op->kind != HTTP_OP_RANGE)
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
    pz_free(op->end);
    pz_buf_free(&op->cmd);
    op->key = NULL;
    op->value = NULL;
    op->end = NULL;
    op->klen = op->vlen = op->elen = 0;
}
