/* tokens.c - see tokens.h. */
#include "tokens.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "http_parse.h"
#include "kv.h"
#include "pz.h"

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static bool name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

static void digest_of(const char *tok, size_t len, uint8_t out[SHA256_SIZE])
{
    struct sha256 s;
    sha256_init(&s);
    sha256_update(&s, tok, len);
    sha256_final(&s, out);
}

static void token_clear(struct token *t)
{
    for (size_t i = 0; i < t->n_prefixes; i++) {
        pz_free(t->prefixes[i].p);
        pz_free(t->prefixes[i].end);
    }
    pz_free(t->prefixes);
    t->prefixes = NULL;
    t->n_prefixes = 0;
}

void tokens_free(struct token_set *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++)
        token_clear(&s->t[i]);
    pz_free(s->t);
    pz_free(s->by_digest);
    pz_free(s);
}

/* Decode one prefix field f[0..n) into p; returns NULL or why not. */
static const char *decode_prefix(const char *f, size_t n,
                                 struct token_prefix *p)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)f[i] <= ' ' || (unsigned char)f[i] >= 0x7f)
            return "a prefix is printable ASCII (use %XX for other bytes)";
    struct pz_buf b;
    pz_buf_init(&b);
    if (http_pct_decode(&b, f, n, false) < 0) {
        pz_buf_free(&b);
        return "bad %XX escape in a prefix";
    }
    if (b.len > TOKEN_PREFIX_MAX) {
        pz_buf_free(&b);
        return "a prefix is at most 1024 bytes";
    }
    p->len = b.len;
    p->p = (uint8_t *)b.data; /* its bytes, now p's (n >= 1: not NULL) */
    p->end = pz_malloc(p->len);
    p->elen = kv_prefix_end(p->p, p->len, p->end);
    return NULL;
}

/* Parse one line (no newline) into t; returns NULL or why not. */
static const char *parse_line(const char *s, size_t n, struct token *t,
                              const char **tok, size_t *toklen)
{
    const char *f[3 + TOKEN_PREFIXES_MAX];
    size_t fl[3 + TOKEN_PREFIXES_MAX];
    size_t nf = 0, i = 0;
    while (i < n) {
        while (i < n && is_blank(s[i]))
            i++;
        if (i == n)
            break;
        if (nf == PZ_ARRAY_SIZE(f))
            return "more than 32 prefixes";
        f[nf] = s + i;
        while (i < n && !is_blank(s[i]))
            i++;
        fl[nf] = (size_t)(s + i - f[nf]);
        nf++;
    }
    if (nf < 3)
        return "want NAME RIGHTS TOKEN [PREFIX ...]";
    if (fl[0] > TOKEN_NAME_MAX)
        return "a name is at most 64 characters";
    for (size_t k = 0; k < fl[0]; k++)
        if (!name_char(f[0][k]))
            return "a name is letters, digits, '.', '_' and '-'";
    memcpy(t->name, f[0], fl[0]);
    t->name[fl[0]] = '\0';
    if (fl[1] == 2 && memcmp(f[1], "ro", 2) == 0)
        t->rights = TOKEN_READ;
    else if (fl[1] == 2 && memcmp(f[1], "rw", 2) == 0)
        t->rights = TOKEN_READ | TOKEN_WRITE;
    else
        return "rights must be ro or rw";
    if (fl[2] < TOKEN_MIN || fl[2] > TOKEN_MAX)
        return "a token is 16 to 256 characters";
    for (size_t k = 0; k < fl[2]; k++)
        if ((unsigned char)f[2][k] <= ' ' || (unsigned char)f[2][k] >= 0x7f)
            return "a token is printable ASCII without blanks";
    digest_of(f[2], fl[2], t->digest);
    *tok = f[2];
    *toklen = fl[2];
    if (nf > 3)
        t->prefixes = pz_calloc(nf - 3, sizeof *t->prefixes);
    for (size_t k = 3; k < nf; k++) {
        const char *why = decode_prefix(f[k], fl[k], &t->prefixes[k - 3]);
        if (why)
            return why;
        t->n_prefixes++;
    }
    return NULL;
}

unsigned long tokens_compares;

/* Token pointers in order of name, then of place in the file (the array
 * is in file order): equal names end up side by side, the first first. */
static int by_name(const void *a, const void *b)
{
    const struct token *x = *(const struct token *const *)a;
    const struct token *y = *(const struct token *const *)b;
    tokens_compares++;
    int c = strcmp(x->name, y->name);
    return c ? c : (x > y) - (x < y);
}

/* Token pointers in order of digest, then of place in the file. */
static int by_digest(const void *a, const void *b)
{
    const struct token *x = *(const struct token *const *)a;
    const struct token *y = *(const struct token *const *)b;
    tokens_compares++;
    int c = memcmp(x->digest, y->digest, SHA256_SIZE);
    return c ? c : (x > y) - (x < y);
}

static bool same_name(const struct token *x, const struct token *y)
{
    tokens_compares++;
    return strcmp(x->name, y->name) == 0;
}

static bool same_digest(const struct token *x, const struct token *y)
{
    tokens_compares++;
    return memcmp(x->digest, y->digest, SHA256_SIZE) == 0;
}

/* Sort v[0..n) (pointers to every token of s) with cmp, and set first[i],
 * for each token s->t[i], to the index of the first token of the file
 * equal to it by same, or SIZE_MAX if it is that first one itself. A sort
 * and one pass: n log n comparisons, where comparing each token with
 * every earlier one took n * n / 2. */
static void mark_repeats(const struct token_set *s, struct token **v,
                         int (*cmp)(const void *, const void *),
                         bool (*same)(const struct token *,
                                      const struct token *),
                         size_t *first)
{
    qsort(v, s->n, sizeof *v, cmp);
    size_t head = 0;
    for (size_t i = 0; i < s->n; i++) {
        size_t at = (size_t)(v[i] - s->t);
        if (i > 0 && same(v[head], v[i])) {
            first[at] = (size_t)(v[head] - s->t);
        } else {
            head = i;
            first[at] = SIZE_MAX;
        }
    }
}

/* Check that names and tokens are unique and index the set by digest
 * (s->by_digest). On a repeat returns false, with *line the first line of
 * the file repeating an earlier name or token and why the reason: of the
 * lines it repeats, the earliest decides (the name first when that line
 * has both), as checking each line against every earlier one found. */
static bool index_set(struct token_set *s, size_t *line, char *why,
                      size_t whylen)
{
    if (s->n == 0)
        return true;
    struct token **v = pz_malloc(s->n * sizeof *v);
    size_t *name_of = pz_malloc(s->n * sizeof *name_of);
    size_t *token_of = pz_malloc(s->n * sizeof *token_of);
    for (size_t i = 0; i < s->n; i++)
        v[i] = &s->t[i];
    mark_repeats(s, v, by_name, same_name, name_of);
    mark_repeats(s, v, by_digest, same_digest, token_of);
    bool ok = true;
    for (size_t i = 0; i < s->n && ok; i++) {
        size_t k = name_of[i] < token_of[i] ? name_of[i] : token_of[i];
        if (k == SIZE_MAX)
            continue;
        const struct token *t = &s->t[i];
        if (k == name_of[i])
            snprintf(why, whylen, "name '%s' is used twice", t->name);
        else
            snprintf(why, whylen, "token '%s' repeats the token of '%s'",
                     t->name, s->t[k].name);
        *line = t->line;
        ok = false;
    }
    pz_free(name_of);
    pz_free(token_of);
    if (ok)
        s->by_digest = v; /* sorted by digest, the last sort */
    else
        pz_free(v);
    return ok;
}

int tokens_parse(const char *text, size_t len, struct token_set **out,
                 size_t *line, char *why, size_t whylen)
{
    *out = NULL;
    *line = 0;
    if (len > TOKENS_FILE_MAX) {
        snprintf(why, whylen, "over %u bytes", TOKENS_FILE_MAX);
        return PZ_EINVAL;
    }
    struct token_set *s = pz_calloc(1, sizeof *s);
    size_t cap = 0, lineno = 0, pos = 0, bad_line = 0;
    /* Each line on its own first, up to the first one refused (bad_line,
     * why); then names and tokens are checked to be unique. */
    while (pos < len) {
        const char *ls = text + pos;
        const char *nl = memchr(ls, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - ls) : len - pos;
        pos += n + (nl != NULL);
        lineno++;
        if (memchr(ls, '\0', n)) {
            snprintf(why, whylen, "a NUL byte");
            bad_line = lineno;
            break;
        }
        if (n > 0 && ls[n - 1] == '\r')
            n--;
        size_t b = 0;
        while (b < n && is_blank(ls[b]))
            b++;
        if (b == n || ls[b] == '#')
            continue;
        if (s->n == TOKENS_MAX) {
            snprintf(why, whylen, "more than %d tokens", TOKENS_MAX);
            bad_line = lineno;
            break;
        }
        if (s->n == cap) {
            cap = cap ? cap * 2 : 8;
            s->t = pz_realloc(s->t, cap * sizeof *s->t);
        }
        struct token *t = &s->t[s->n];
        memset(t, 0, sizeof *t);
        const char *tok = NULL;
        size_t toklen = 0;
        const char *bad = parse_line(ls, n, t, &tok, &toklen);
        if (bad) {
            token_clear(t);
            snprintf(why, whylen, "%s", bad);
            bad_line = lineno;
            break;
        }
        t->line = lineno;
        s->n++;
    }
    /* A line repeating an earlier one comes before bad_line, where
     * parsing stopped: its refusal goes first, as when each line was
     * checked against the earlier ones as it was read. */
    if (!index_set(s, line, why, whylen) || bad_line) {
        if (*line == 0)
            *line = bad_line;
        tokens_free(s);
        return PZ_EINVAL;
    }
    *out = s;
    return 0;
}

const struct token *tokens_find(const struct token_set *s, const char *tok,
                                size_t len)
{
    if (s == NULL || len == 0)
        return NULL;
    uint8_t d[SHA256_SIZE];
    digest_of(tok, len, d);
    /* A binary search among the digests. Its path and memcmp's early stop
     * depend on the presented token's digest only as it compares with the
     * digests held: at most they could tell where SHA-256 of a guess falls
     * and how many of its first bytes it shares with a digest held. That
     * brings a guess no nearer to a token (a guess sharing characters with
     * a token has an unrelated digest; a digest's first bytes give none of
     * the token without a SHA-256 preimage), so the comparison need not be
     * constant-time as one of the secret itself would be. */
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const struct token *t = s->by_digest[mid];
        tokens_compares++;
        int c = memcmp(d, t->digest, SHA256_SIZE);
        if (c == 0)
            return t;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

bool token_restricted(const struct token *t)
{
    return t->n_prefixes > 0;
}

bool token_key_ok(const struct token *t, const uint8_t *k, size_t klen)
{
    if (t->n_prefixes == 0)
        return true;
    for (size_t i = 0; i < t->n_prefixes; i++) {
        const struct token_prefix *p = &t->prefixes[i];
        if (klen >= p->len && memcmp(k, p->p, p->len) == 0)
            return true;
    }
    return false;
}

/* Bytewise order, a shorter key before its extensions (kv.h). */
static int cmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    size_t n = al < bl ? al : bl;
    int c = n ? memcmp(a, b, n) : 0;
    if (c != 0)
        return c;
    return al < bl ? -1 : al > bl;
}

bool token_range_ok(const struct token *t, const uint8_t *from, size_t flen,
                    const uint8_t *to, size_t tlen, bool to_end)
{
    if (t->n_prefixes == 0)
        return true;
    for (size_t i = 0; i < t->n_prefixes; i++) {
        const struct token_prefix *p = &t->prefixes[i];
        /* The keys of prefix p are [p, end(p)), or [p, ...) without an
         * end; the range must start inside and stop by its end. */
        if (!token_key_ok(&(struct token){.prefixes = (struct token_prefix *)p,
                                          .n_prefixes = 1},
                          from, flen))
            continue;
        if (p->elen < 0)
            return true;
        if (!to_end && cmp(to, tlen, p->end, (size_t)p->elen) <= 0)
            return true;
    }
    return false;
}
