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

/* Growth of the payload buffer is capped per step so that a prefix that
 * announces a large message cannot make us allocate it before the bytes
 * actually arrive. */
#define RESERVE_STEP (64 * 1024)

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
            if (r->msg.cap - r->msg.len < n)
                pz_buf_reserve(&r->msg, PZ_MAX(n, PZ_MIN(want, RESERVE_STEP)));
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
    pz_buf_reset(&r->msg);
}

bool grpc_reader_partial(const struct grpc_reader *r)
{
    return !r->ready && !r->dead && r->hdr_have > 0;
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

/* Length of the UTF-8 sequence starting with byte b, 1 for anything that
 * does not start a sequence (so such bytes are cut on their own). */
static size_t utf8_seq_len(uint8_t b)
{
    if (b >= 0xF0 && b <= 0xF7)
        return 4;
    if (b >= 0xE0)
        return b <= 0xEF ? 3 : 1;
    if (b >= 0xC0)
        return 2;
    return 1;
}

void grpc_message_encode(struct pz_buf *out, const char *msg, size_t len,
                         size_t max_out)
{
    size_t budget = max_out;
    size_t i = 0;
    while (i < len) {
        const uint8_t *u = (const uint8_t *)msg + i;
        size_t seq = utf8_seq_len(u[0]);
        if (seq > len - i)
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
    if (!prefix_ci(v, len, base))
        return false;
    return len == n || v[n] == '+' || v[n] == ';';
}
