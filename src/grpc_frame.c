/* grpc_frame.c - see grpc_frame.h. Pure. */
#include "grpc_frame.h"

#include <stdio.h>
#include <string.h>

static const char *const status_names[] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *grpc_status_name(int code)
{
    if (code < 0 || (size_t)code >= PZ_ARRAY_SIZE(status_names))
        return "UNKNOWN";
    return status_names[code];
}

int grpc_status_parse(const char *s, size_t len)
{
    if (len == 0 || len > 2)
        return -1;
    int v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

int grpc_status_from_http(int http_status)
{
    switch (http_status) {
    case 400:
        return GRPC_INTERNAL;
    case 401:
        return GRPC_UNAUTHENTICATED;
    case 403:
        return GRPC_PERMISSION_DENIED;
    case 404:
        return GRPC_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
        return GRPC_UNAVAILABLE;
    default:
        return GRPC_UNKNOWN;
    }
}

/* --- framing -------------------------------------------------------------- */

void grpc_frame_header(uint8_t out[GRPC_FRAME_HEADER], bool compressed,
                       uint32_t len)
{
    out[0] = compressed ? 1 : 0;
    pz_put_u32(out + 1, len);
}

void grpc_frame_append(struct pz_buf *out, const void *msg, size_t len)
{
    uint8_t hdr[GRPC_FRAME_HEADER];
    pz_assert(len <= UINT32_MAX);
    grpc_frame_header(hdr, false, (uint32_t)len);
    pz_buf_reserve(out, sizeof hdr + len);
    pz_buf_append(out, hdr, sizeof hdr);
    if (len)
        pz_buf_append(out, msg, len);
}

void grpc_reader_init(struct grpc_reader *r, size_t max)
{
    memset(r, 0, sizeof *r);
    r->max = max;
    pz_buf_init(&r->msg);
}

void grpc_reader_free(struct grpc_reader *r)
{
    pz_buf_free(&r->msg);
}

/* The payload buffer grows with the bytes that arrived (at most twice
 * that, or RESERVE_STEP), never past the announced length: a prefix that
 * announces a large message allocates nothing before its bytes come, and
 * a complete message occupies its length plus one byte. */
#define RESERVE_STEP (64 * 1024)

static void msg_grow(struct grpc_reader *r, size_t n)
{
    struct pz_buf *b = &r->msg;
    size_t need = b->len + n + 1;
    if (need <= b->cap)
        return;
    size_t end = (size_t)r->len + 1;
    size_t cap =
        PZ_MAX(need, PZ_MIN(PZ_MAX(2 * b->cap, (size_t)RESERVE_STEP), end));
    b->data = pz_realloc(b->data, cap);
    b->cap = cap;
}

int grpc_reader_feed(struct grpc_reader *r, const uint8_t *p, size_t len,
                     size_t *used)
{
    size_t off = 0;
    *used = 0;
    if (r->dead)
        return GRPC_READ_TOO_BIG;
    if (r->ready)
        return GRPC_READ_MESSAGE;
    while (off < len || r->hdr_have == GRPC_FRAME_HEADER) {
        if (r->hdr_have < GRPC_FRAME_HEADER) {
            size_t n = PZ_MIN(GRPC_FRAME_HEADER - r->hdr_have, len - off);
            memcpy(r->hdr + r->hdr_have, p + off, n);
            r->hdr_have += n;
            off += n;
            if (r->hdr_have < GRPC_FRAME_HEADER)
                break;
            /* Bits other than the lowest are reserved; any nonzero flag
             * byte means "compressed" to us, which we refuse anyway. */
            r->compressed = r->hdr[0] != 0;
            r->len = pz_get_u32(r->hdr + 1);
            if (r->len > r->max) {
                r->dead = true;
                *used = off;
                return GRPC_READ_TOO_BIG;
            }
            pz_buf_reset(&r->msg);
        }
        size_t want = r->len - r->msg.len;
        size_t n = PZ_MIN(want, len - off);
        if (n > 0) {
            msg_grow(r, n);
            pz_buf_append(&r->msg, p + off, n);
            off += n;
        }
        if (r->msg.len == r->len) {
            r->ready = true;
            r->messages++;
            *used = off;
            return GRPC_READ_MESSAGE;
        }
        break;
    }
    *used = off;
    return GRPC_READ_MORE;
}

void grpc_reader_next(struct grpc_reader *r)
{
    if (!r->ready)
        return;
    r->ready = false;
    r->hdr_have = 0;
    r->len = 0;
    r->compressed = false;
    pz_buf_free(&r->msg); /* a stream between messages keeps nothing */
}

bool grpc_reader_partial(const struct grpc_reader *r)
{
    return !r->ready && !r->dead && r->hdr_have > 0;
}

/* --- HTTP/2 frame boundaries ------------------------------------------- */

enum {
    H2_HEADERS = 0x1,
    H2_SETTINGS = 0x4,
    H2_PUSH_PROMISE = 0x5,
    H2_CONTINUATION = 0x9,
    H2_END_HEADERS = 0x4,
};

void grpc_h2_scan_init(struct grpc_h2_scan *s)
{
    memset(s, 0, sizeof *s);
    s->preface_left = GRPC_H2_PREFACE_LEN;
}

/* The current frame is complete. */
static void scan_frame_done(struct grpc_h2_scan *s)
{
    s->in_payload = false;
    s->hdr_have = 0;
    if (s->type == H2_SETTINGS)
        s->settings_done = true;
    if ((s->type == H2_HEADERS || s->type == H2_PUSH_PROMISE ||
         s->type == H2_CONTINUATION) &&
        (s->flags & H2_END_HEADERS))
        s->in_block = false;
}

void grpc_h2_scan_feed(struct grpc_h2_scan *s, const uint8_t *p, size_t len)
{
    size_t off = 0;
    size_t n = PZ_MIN(s->preface_left, len);
    s->preface_left -= n;
    off += n;
    while (off < len) {
        if (!s->in_payload) {
            n = PZ_MIN(sizeof s->hdr - s->hdr_have, len - off);
            memcpy(s->hdr + s->hdr_have, p + off, n);
            s->hdr_have += n;
            off += n;
            if (s->hdr_have < sizeof s->hdr)
                break;
            s->payload_left = (uint32_t)s->hdr[0] << 16 |
                              (uint32_t)s->hdr[1] << 8 | s->hdr[2];
            s->type = s->hdr[3];
            s->flags = s->hdr[4];
            s->in_payload = true;
            if (s->type == H2_HEADERS || s->type == H2_PUSH_PROMISE) {
                s->in_block = true;
                s->blocks++;
            }
        }
        n = PZ_MIN(s->payload_left, len - off);
        s->payload_left -= (uint32_t)n;
        off += n;
        if (s->payload_left == 0)
            scan_frame_done(s); /* also a frame with no payload */
    }
}

bool grpc_h2_scan_in_preface(const struct grpc_h2_scan *s)
{
    return !s->settings_done;
}

bool grpc_h2_scan_in_headers(const struct grpc_h2_scan *s)
{
    return s->in_block;
}

/* --- headers -------------------------------------------------------------- */

int grpc_timeout_parse(const char *s, size_t len, uint64_t *ms)
{
    if (len < 2 || len > 9)
        return PZ_EINVAL;
    uint64_t v = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return PZ_EINVAL;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    switch (s[len - 1]) {
    case 'H':
        *ms = v * 3600000u;
        break;
    case 'M':
        *ms = v * 60000u;
        break;
    case 'S':
        *ms = v * 1000u;
        break;
    case 'm':
        *ms = v;
        break;
    case 'u':
        *ms = (v + 999u) / 1000u;
        break;
    case 'n':
        *ms = (v + 999999u) / 1000000u;
        break;
    default:
        return PZ_EINVAL;
    }
    return 0;
}

size_t grpc_timeout_format(uint64_t ms, char *out, size_t outlen)
{
    static const struct {
        uint64_t per; /* milliseconds per unit */
        char unit;    /* grpc-timeout unit letter */
    } units[] = {{1, 'm'}, {1000, 'S'}, {60000, 'M'}, {3600000, 'H'}};
    pz_assert(outlen >= 16);
    for (size_t i = 0; i < PZ_ARRAY_SIZE(units); i++) {
        uint64_t v = ms / units[i].per + (ms % units[i].per != 0);
        if (v <= 99999999u || i + 1 == PZ_ARRAY_SIZE(units)) {
            if (v > 99999999u)
                v = 99999999u;
            int n = snprintf(out, outlen, "%llu%c", (unsigned long long)v,
                             units[i].unit);
            return (size_t)n;
        }
    }
    return 0; /* not reached */
}

static const char hex_digits[] = "0123456789ABCDEF";

void grpc_message_encode(struct pz_buf *out, const char *msg, size_t len,
                         size_t max_out)
{
    size_t budget = max_out;
    size_t i = 0;
    while (i < len) {
        const uint8_t *u = (const uint8_t *)msg + i;
        /* Never cut inside a character; bytes that are not UTF-8 go one
         * by one. */
        size_t seq = pz_utf8_decode(u, len - i, NULL);
        if (seq == 0)
            seq = 1;
        size_t cost = 0;
        for (size_t k = 0; k < seq; k++) {
            uint8_t b = u[k];
            cost += (b < 0x20 || b > 0x7E || b == '%') ? 3 : 1;
        }
        if (cost > budget)
            break;
        for (size_t k = 0; k < seq; k++) {
            uint8_t b = u[k];
            if (b < 0x20 || b > 0x7E || b == '%') {
                char e[3] = {'%', hex_digits[b >> 4], hex_digits[b & 15]};
                pz_buf_append(out, e, 3);
            } else {
                pz_buf_append(out, &b, 1);
            }
        }
        budget -= cost;
        i += seq;
    }
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

void grpc_message_decode(struct pz_buf *out, const char *s, size_t len)
{
    pz_buf_reserve(out, len + 1);
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%' && i + 2 < len) {
            int hi = hex_value(s[i + 1]), lo = hex_value(s[i + 2]);
            if (hi >= 0 && lo >= 0) {
                char c = (char)(hi << 4 | lo);
                pz_buf_append(out, &c, 1);
                i += 2;
                continue;
            }
        }
        pz_buf_append(out, s + i, 1);
    }
    pz_buf_reserve(out, 1);
    out->data[out->len] = '\0';
}

static bool prefix_ci(const char *v, size_t len, const char *p)
{
    size_t n = strlen(p);
    if (len < n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = v[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c != p[i])
            return false;
    }
    return true;
}

bool grpc_content_type_ok(const char *v, size_t len)
{
    static const char base[] = "application/grpc";
    size_t n = sizeof base - 1;
    /* Exact lowercase, as clients send it, before the case-blind match. */
    if (len < n || (memcmp(v, base, n) != 0 && !prefix_ci(v, len, base)))
        return false;
    return len == n || v[n] == '+' || v[n] == ';';
}
