/* json.c - see json.h. Checking is a recursive descent bounded by
 * JSON_MAX_DEPTH; everything after it walks text known to be well-formed,
 * bounds-checked all the same. */
#include "json.h"

#include <string.h>

/* --- checking ------------------------------------------------------------- */

struct cur {
    const char *s; /* document */
    size_t n;      /* its length */
    size_t i;      /* read position */
};

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void skip_ws(struct cur *c)
{
    while (c->i < c->n && is_ws(c->s[c->i]))
        c->i++;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Four hex digits at s[0..n): the code unit, or -1. */
static long hex4(const char *s, size_t n)
{
    if (n < 4)
        return -1;
    long v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(s[k]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

/* Bytes check_string must stop at: controls, the quote, the backslash. */
static const bool str_special[256] = {
    [0x00 ... 0x1f] = true, ['"'] = true, ['\\'] = true};

/* Eight bytes at a time: a word with none of str_special's bytes (no byte
 * under 0x20, no quote, no backslash) is skipped whole; the first word
 * with one is left to the byte loop, which finds which. */
#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)

static bool word_plain(uint64_t w)
{
    /* A byte under 0x20, or one that is zero once xored with '"' or '\\'
     * (the classic has-zero and has-less-than tests: never a false "no"). */
    uint64_t q = w ^ (ONES * '"'), b = w ^ (ONES * '\\');
    uint64_t special = ((w - ONES * 0x20) & ~w) | ((q - ONES) & ~q) |
                       ((b - ONES) & ~b);
    return (special & HIGHS) == 0;
}

/* Sixteen bytes at a time where the compiler has vectors (GCC and clang
 * vector extensions: SSE2 on x86-64, NEON on arm64, scalar code
 * elsewhere): each lane of the mask is all ones at a special byte. */
typedef unsigned char v16u8 __attribute__((vector_size(16)));

static bool block_plain(const unsigned char *u)
{
    v16u8 w, special;
    uint64_t half[2];
    memcpy(&w, u, 16);
    special = (v16u8)((w < 0x20) | (w == '"') | (w == '\\'));
    memcpy(half, &special, 16);
    return (half[0] | half[1]) == 0;
}

static size_t skip_plain(const unsigned char *u, size_t i, size_t n)
{
    uint64_t w;
    while (n - i >= 16 && block_plain(u + i))
        i += 16;
    while (n - i >= 8) {
        memcpy(&w, u + i, 8);
        if (!word_plain(w))
            break;
        i += 8;
    }
    while (i < n && !str_special[u[i]])
        i++;
    return i;
}

static int check_string(struct cur *c)
{
    const unsigned char *u = (const unsigned char *)c->s;
    c->i++; /* opening quote */
    while (c->i < c->n) {
        c->i = skip_plain(u, c->i, c->n); /* plain bytes */
        if (c->i >= c->n)
            break;
        unsigned char ch = (unsigned char)c->s[c->i++];
        if (ch == '"')
            return 0;
        if (ch < 0x20)
            return -1; /* control characters must be escaped */
        if (ch != '\\')
            continue;
        if (c->i >= c->n)
            return -1;
        switch (c->s[c->i++]) {
        case '"':
        case '\\':
        case '/':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't':
            break;
        case 'u': {
            long cu = hex4(c->s + c->i, c->n - c->i);
            if (cu < 0)
                return -1;
            c->i += 4;
            if (cu >= 0xDC00 && cu <= 0xDFFF)
                return -1; /* a lone low surrogate */
            if (cu >= 0xD800 && cu <= 0xDBFF) {
                /* RFC 8259 §7: a surrogate pair escapes one code point. */
                if (c->n - c->i < 6 || c->s[c->i] != '\\' ||
                    c->s[c->i + 1] != 'u')
                    return -1;
                long lo = hex4(c->s + c->i + 2, c->n - c->i - 2);
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return -1;
                c->i += 6;
            }
            break;
        }
        default:
            return -1;
        }
    }
    return -1; /* unterminated */
}

static int check_number(struct cur *c)
{
    size_t i = c->i;
    const char *s = c->s;
    if (i < c->n && s[i] == '-')
        i++;
    if (i >= c->n || !is_digit(s[i]))
        return -1;
    if (s[i] == '0')
        i++; /* no leading zeros */
    else
        while (i < c->n && is_digit(s[i]))
            i++;
    if (i < c->n && s[i] == '.') {
        i++;
        if (i >= c->n || !is_digit(s[i]))
            return -1;
        while (i < c->n && is_digit(s[i]))
            i++;
    }
    if (i < c->n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < c->n && (s[i] == '+' || s[i] == '-'))
            i++;
        if (i >= c->n || !is_digit(s[i]))
            return -1;
        while (i < c->n && is_digit(s[i]))
            i++;
    }
    c->i = i;
    return 0;
}

static int check_literal(struct cur *c, const char *lit)
{
    size_t l = strlen(lit);
    if (c->n - c->i < l || memcmp(c->s + c->i, lit, l) != 0)
        return -1;
    c->i += l;
    return 0;
}

static int check_value(struct cur *c, int depth);

/* An object or an array at c->i (its opening bracket). */
static int check_container(struct cur *c, int depth, char close)
{
    c->i++;
    skip_ws(c);
    if (c->i < c->n && c->s[c->i] == close) {
        c->i++;
        return 0;
    }
    for (;;) {
        skip_ws(c);
        if (close == '}') {
            if (c->i >= c->n || c->s[c->i] != '"' || check_string(c))
                return -1;
            skip_ws(c);
            if (c->i >= c->n || c->s[c->i] != ':')
                return -1;
            c->i++;
        }
        if (check_value(c, depth + 1))
            return -1;
        skip_ws(c);
        if (c->i < c->n && c->s[c->i] == ',') {
            c->i++;
            continue;
        }
        if (c->i < c->n && c->s[c->i] == close) {
            c->i++;
            return 0;
        }
        return -1;
    }
}

static int check_value(struct cur *c, int depth)
{
    if (depth > JSON_MAX_DEPTH)
        return -1;
    skip_ws(c);
    if (c->i >= c->n)
        return -1;
    switch (c->s[c->i]) {
    case '{':
        return check_container(c, depth, '}');
    case '[':
        return check_container(c, depth, ']');
    case '"':
        return check_string(c);
    case 't':
        return check_literal(c, "true");
    case 'f':
        return check_literal(c, "false");
    case 'n':
        return check_literal(c, "null");
    default:
        return check_number(c);
    }
}

static enum json_type type_at(char ch)
{
    switch (ch) {
    case '{':
        return JSON_OBJECT;
    case '[':
        return JSON_ARRAY;
    case '"':
        return JSON_STRING;
    case 't':
        return JSON_TRUE;
    case 'f':
        return JSON_FALSE;
    case 'n':
        return JSON_NULL;
    default:
        return JSON_NUMBER;
    }
}

int json_parse(const char *doc, size_t len, struct json_val *root)
{
    struct cur c = {doc, len, 0};
    skip_ws(&c);
    size_t start = c.i;
    if (check_value(&c, 1))
        return PZ_EINVAL;
    size_t end = c.i;
    skip_ws(&c);
    if (c.i != c.n)
        return PZ_EINVAL; /* trailing bytes */
    root->type = type_at(doc[start]);
    root->s = doc + start;
    root->len = end - start;
    return 0;
}

/* --- flat objects of plain strings -------------------------------------- */

/* The plain string (no escape, no control character) whose opening quote
 * is at c->i: past its closing quote, true; false if it is not one. */
static bool flat_string(struct cur *c, struct json_val *v)
{
    size_t j = skip_plain((const unsigned char *)c->s, c->i + 1, c->n);
    if (j >= c->n || c->s[j] != '"')
        return false; /* an escape, a control character, or the end */
    v->type = JSON_STRING;
    v->s = c->s + c->i;
    v->len = j + 1 - c->i;
    c->i = j + 1;
    return true;
}

int json_flat(const char *doc, size_t len, struct json_val *names,
              struct json_val *vals, size_t max)
{
    struct cur c = {doc, len, 0};
    size_t m = 0;
    skip_ws(&c);
    if (c.i >= c.n || c.s[c.i] != '{')
        return -1;
    c.i++;
    skip_ws(&c);
    if (c.i < c.n && c.s[c.i] == '}') {
        c.i++;
    } else {
        for (;;) {
            if (m == max || c.i >= c.n || c.s[c.i] != '"' ||
                !flat_string(&c, &names[m]))
                return -1;
            skip_ws(&c);
            if (c.i >= c.n || c.s[c.i] != ':')
                return -1;
            c.i++;
            skip_ws(&c);
            if (c.i >= c.n || c.s[c.i] != '"' || !flat_string(&c, &vals[m]))
                return -1;
            m++;
            skip_ws(&c);
            if (c.i < c.n && c.s[c.i] == ',') {
                c.i++;
                skip_ws(&c);
                continue;
            }
            if (c.i < c.n && c.s[c.i] == '}') {
                c.i++;
                break;
            }
            return -1;
        }
    }
    skip_ws(&c);
    return c.i == c.n ? (int)m : -1;
}

/* --- walking checked text ---------------------------------------------- */

/* Past the string whose opening quote is at s[i]: its closing quote is
 * the first one after an even run of backslashes (memchr finds quotes many
 * bytes at a time; a value is walked once per member looked up). */
static size_t skip_string(const char *s, size_t n, size_t i)
{
    size_t from = i + 1;
    while (from < n) {
        const char *q = memchr(s + from, '"', n - from);
        if (q == NULL)
            return n;
        size_t j = (size_t)(q - s), bs = 0;
        while (j - bs > from && s[j - bs - 1] == '\\')
            bs++;
        if (bs % 2 == 0)
            return j + 1;
        from = j + 1; /* an escaped quote */
    }
    return n;
}

/* Past the value that starts at s[i]. */
static size_t skip_value(const char *s, size_t n, size_t i)
{
    if (i >= n)
        return n;
    if (s[i] == '"')
        return skip_string(s, n, i);
    if (s[i] == '{' || s[i] == '[') {
        size_t depth = 0;
        while (i < n) {
            char ch = s[i];
            if (ch == '"') {
                i = skip_string(s, n, i);
                continue;
            }
            if (ch == '{' || ch == '[')
                depth++;
            else if ((ch == '}' || ch == ']') && --depth == 0)
                return i + 1;
            i++;
        }
        return n;
    }
    while (i < n && s[i] != ',' && s[i] != '}' && s[i] != ']' && !is_ws(s[i]))
        i++;
    return i;
}

void json_iter_init(struct json_iter *it, const struct json_val *container)
{
    bool walk = container->type == JSON_OBJECT || container->type == JSON_ARRAY;
    it->s = container->s;
    it->n = walk ? container->len : 0;
    it->i = 1; /* past the opening bracket */
    it->object = container->type == JSON_OBJECT;
    it->first = true;
}

static void walk_ws(struct json_iter *it)
{
    while (it->i < it->n && is_ws(it->s[it->i]))
        it->i++;
}

bool json_iter_next(struct json_iter *it, struct json_val *name,
                    struct json_val *val)
{
    walk_ws(it);
    if (it->i >= it->n || it->s[it->i] == '}' || it->s[it->i] == ']')
        return false;
    if (!it->first) {
        it->i++; /* ',' */
        walk_ws(it);
    }
    it->first = false;
    if (it->object) {
        size_t e = skip_string(it->s, it->n, it->i);
        if (name) {
            name->type = JSON_STRING;
            name->s = it->s + it->i;
            name->len = e - it->i;
        }
        it->i = e;
        walk_ws(it);
        it->i++; /* ':' */
        walk_ws(it);
    }
    if (it->i >= it->n)
        return false;
    size_t e = skip_value(it->s, it->n, it->i);
    val->type = type_at(it->s[it->i]);
    val->s = it->s + it->i;
    val->len = e - it->i;
    it->i = e;
    return true;
}

bool json_get(const struct json_val *obj, const char *name,
              struct json_val *val)
{
    struct json_iter it;
    struct json_val k, v;
    size_t nl = strlen(name);
    bool found = false;
    if (obj->type != JSON_OBJECT)
        return false;
    json_iter_init(&it, obj);
    while (json_iter_next(&it, &k, &v)) {
        if (json_str_is(&k, name, nl)) {
            *val = v; /* the last one counts */
            found = true;
        }
    }
    return found;
}

/* --- strings and numbers -------------------------------------------------- */

static void put_utf8(struct pz_buf *out, unsigned long cp)
{
    unsigned char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (unsigned char)(0xC0 | (cp >> 6));
        b[1] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (unsigned char)(0xE0 | (cp >> 12));
        b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (unsigned char)(0xF0 | (cp >> 18));
        b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    pz_buf_append(out, b, n);
}

void json_str(const struct json_val *v, struct pz_buf *out)
{
    if (v->type != JSON_STRING || v->len < 2)
        return;
    const char *s = v->s + 1;
    size_t n = v->len - 2, i = 0;
    if (n)
        pz_buf_reserve(out, n); /* escapes only ever shorten the text */
    while (i < n) {
        const char *bs = memchr(s + i, '\\', n - i);
        size_t run = bs ? (size_t)(bs - s) : n;
        pz_buf_append(out, s + i, run - i);
        i = run;
        if (i + 1 >= n)
            break;
        char e = s[i + 1], lit;
        i += 2;
        switch (e) {
        case 'b':
            lit = '\b';
            break;
        case 'f':
            lit = '\f';
            break;
        case 'n':
            lit = '\n';
            break;
        case 'r':
            lit = '\r';
            break;
        case 't':
            lit = '\t';
            break;
        case 'u': {
            long cu = hex4(s + i, n - i);
            if (cu < 0)
                return; /* not from json_parse() */
            i += 4;
            unsigned long cp = (unsigned long)cu;
            if (cu >= 0xD800 && cu <= 0xDBFF && n - i >= 6) {
                long lo = hex4(s + i + 2, n - i - 2);
                if (lo >= 0xDC00 && lo <= 0xDFFF) {
                    cp = 0x10000 + (((unsigned long)cu - 0xD800) << 10) +
                         ((unsigned long)lo - 0xDC00);
                    i += 6;
                }
            }
            put_utf8(out, cp);
            continue;
        }
        default:
            lit = e; /* '"', '\\', '/' */
        }
        pz_buf_append(out, &lit, 1);
    }
}

char *json_strdup(const struct json_val *v, size_t *len)
{
    if (v->type == JSON_STRING && v->len > 2 &&
        memchr(v->s + 1, '\\', v->len - 2) == NULL) {
        /* Nothing escaped: the bytes as they are, in one allocation. */
        *len = v->len - 2;
        char *d = pz_malloc(*len + 1);
        memcpy(d, v->s + 1, *len);
        d[*len] = '\0';
        return d;
    }
    struct pz_buf b;
    pz_buf_init(&b);
    json_str(v, &b);
    *len = b.len;
    if (b.data == NULL)
        return pz_strdup("");
    return b.data; /* pz_buf keeps its data NUL-terminated */
}

bool json_str_is(const struct json_val *v, const char *name, size_t nlen)
{
    if (v->type != JSON_STRING || v->len < 2)
        return false;
    const char *raw = v->s + 1;
    size_t rl = v->len - 2;
    if (memchr(raw, '\\', rl) == NULL)
        return rl == nlen && memcmp(raw, name, nlen) == 0;
    if (rl < nlen)
        return false; /* escapes only ever shorten the text */
    struct pz_buf b;
    pz_buf_init(&b);
    json_str(v, &b);
    bool eq = b.len == nlen && (nlen == 0 || memcmp(b.data, name, nlen) == 0);
    pz_buf_free(&b);
    return eq;
}

int json_u64(const struct json_val *v, uint64_t *out)
{
    if (v->type != JSON_NUMBER || v->len == 0 || (v->s[0] == '0' && v->len > 1))
        return PZ_EINVAL;
    uint64_t x = 0;
    for (size_t i = 0; i < v->len; i++) {
        if (!is_digit(v->s[i]))
            return PZ_EINVAL; /* a sign, a fraction or an exponent */
        unsigned d = (unsigned)(v->s[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return PZ_EINVAL;
        x = x * 10 + d;
    }
    *out = x;
    return 0;
}

void json_put_string(struct pz_buf *out, const void *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = s;
    pz_buf_append(out, "\"", 1);
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            pz_buf_append(out, e, 2);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            pz_buf_append(out, e, 6);
            i++;
        } else if (c < 0x80) {
            /* Printable ASCII, the common case: the whole run at once. */
            size_t run = i + 1;
            while (run < n && p[run] >= 0x20 && p[run] < 0x7f &&
                   p[run] != '"' && p[run] != '\\')
                run++;
            pz_buf_append(out, p + i, run - i);
            i = run;
        } else {
            size_t len = pz_utf8_decode(p + i, n - i, NULL);
            if (len == 0) {
                pz_buf_append(out, "\\ufffd", 6);
                i++;
            } else {
                pz_buf_append(out, p + i, len);
                i += len;
            }
        }
    }
    pz_buf_append(out, "\"", 1);
}
