/* tokens.c - see tokens.h. */
#include "tokens.h"

#include <stdio.h>
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
    size_t cap = 0, lineno = 0, pos = 0;
    while (pos < len) {
        const char *ls = text + pos;
        const char *nl = memchr(ls, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - ls) : len - pos;
        pos += n + (nl != NULL);
        lineno++;
        if (memchr(ls, '\0', n)) {
            snprintf(why, whylen, "a NUL byte");
            goto fail;
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
            goto fail;
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
            goto fail;
        }
        s->n++;
        for (size_t k = 0; k + 1 < s->n; k++) {
            if (strcmp(s->t[k].name, t->name) == 0) {
                snprintf(why, whylen, "name '%s' is used twice", t->name);
                goto fail;
            }
            if (memcmp(s->t[k].digest, t->digest, SHA256_SIZE) == 0) {
                snprintf(why, whylen, "token '%s' repeats the token of '%s'",
                         t->name, s->t[k].name);
                goto fail;
            }
        }
    }
    *out = s;
    return 0;
fail:
    *line = lineno;
    tokens_free(s);
    return PZ_EINVAL;
}

const struct token *tokens_find(const struct token_set *s, const char *tok,
                                size_t len)
{
    if (s == NULL || len == 0)
        return NULL;
    uint8_t d[SHA256_SIZE];
    digest_of(tok, len, d);
    const struct token *found = NULL;
    /* Every digest is compared, whatever matched: the time taken does not
     * tell which token, if any, is close. */
    for (size_t i = 0; i < s->n; i++) {
        bool eq = pz_token_equal((const char *)s->t[i].digest, SHA256_SIZE,
                                 (const char *)d, SHA256_SIZE);
        if (eq)
            found = &s->t[i];
    }
    return found;
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
