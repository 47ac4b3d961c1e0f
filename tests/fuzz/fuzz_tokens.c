/* fuzz_tokens.c - the client token file (tokens_parse, a file an operator
 * writes and a reload reads) and a token's key and range checks.
 *
 * Input: the file, then (after a 0xff byte) probe bytes: keys, each with
 * a 1-byte length (fz_bytes).
 *
 * Invariants: a refusal names a line within the file and a reason; an
 * accepted file holds at most TOKENS_MAX
 * tokens with valid names, rights and prefixes, and every token line's
 * third field finds the token of its name (tokens_find), one byte more or
 * less finds none of that name; for every token, a key is allowed
 * exactly when the one-key range [k, k + "\0") is, and an allowed range
 * [from, to) with from < to allows from. */
#include "fuzz.h"

#include "pz.h"
#include "tokens.h"

static bool blank(char c)
{
    return c == ' ' || c == '\t';
}

/* The n-th blank-separated field of line s[0..len): start and length. */
static bool field(const char *s, size_t len, int n, const char **f,
                  size_t *fl)
{
    size_t i = 0;
    for (int k = 0;; k++) {
        while (i < len && blank(s[i]))
            i++;
        if (i == len)
            return false;
        size_t b = i;
        while (i < len && !blank(s[i]))
            i++;
        if (k == n) {
            *f = s + b;
            *fl = i - b;
            return true;
        }
    }
}

static void check_lookups(const struct token_set *set, const char *text,
                          size_t len)
{
    size_t pos = 0;
    while (pos < len) {
        const char *ls = text + pos;
        const char *nl = memchr(ls, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - ls) : len - pos;
        pos += n + (nl != NULL);
        if (n > 0 && ls[n - 1] == '\r')
            n--;
        const char *name, *tok;
        size_t namel, tokl;
        if (!field(ls, n, 0, &name, &namel) || name[0] == '#')
            continue;
        FUZZ_CHECK(field(ls, n, 2, &tok, &tokl));
        const struct token *t = tokens_find(set, tok, tokl);
        FUZZ_CHECK(t != NULL);
        FUZZ_CHECK(strlen(t->name) == namel &&
                   memcmp(t->name, name, namel) == 0);
        const struct token *shorter = tokens_find(set, tok, tokl - 1);
        FUZZ_CHECK(shorter != t);
    }
}

static void check_keys(const struct token *t, struct fz *f)
{
    for (int i = 0; i < 4 && fz_left(f) > 0; i++) {
        size_t al, bl;
        const uint8_t *a = fz_bytes(f, 64, &al);
        const uint8_t *b = fz_bytes(f, 64, &bl);
        uint8_t one[65];
        memcpy(one, a, al);
        one[al] = 0;
        FUZZ_CHECK(token_key_ok(t, a, al) ==
                   token_range_ok(t, a, al, one, al + 1, false));
        size_t m = al < bl ? al : bl;
        int c = m ? memcmp(a, b, m) : 0;
        bool lt = c < 0 || (c == 0 && al < bl);
        if (lt && token_range_ok(t, a, al, b, bl, false))
            FUZZ_CHECK(token_key_ok(t, a, al));
        if (token_range_ok(t, a, al, NULL, 0, true))
            FUZZ_CHECK(token_key_ok(t, a, al));
        if (!token_restricted(t))
            FUZZ_CHECK(token_key_ok(t, a, al));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *sep = memchr(data, 0xff, size);
    size_t flen = sep ? (size_t)(sep - data) : size;
    const char *text = (const char *)data;
    struct fz f;
    fz_init(&f, sep ? sep + 1 : data + size, sep ? size - flen - 1 : 0);

    struct token_set *set = NULL;
    size_t line = 0;
    char why[256] = "";
    int rv = tokens_parse(text, flen, &set, &line, why, sizeof why);
    if (rv != 0) {
        FUZZ_CHECK(set == NULL && why[0] != '\0');
        size_t lines = 1;
        for (size_t i = 0; i < flen; i++)
            lines += text[i] == '\n';
        FUZZ_CHECK(line <= lines);
    } else {
        FUZZ_CHECK(set != NULL && set->n <= TOKENS_MAX);
        for (size_t i = 0; i < set->n; i++) {
            const struct token *t = &set->t[i];
            size_t nl = strlen(t->name);
            FUZZ_CHECK(nl >= 1 && nl <= TOKEN_NAME_MAX);
            FUZZ_CHECK(t->rights == TOKEN_READ ||
                       t->rights == (TOKEN_READ | TOKEN_WRITE));
            FUZZ_CHECK(t->n_prefixes <= TOKEN_PREFIXES_MAX);
            for (size_t k = 0; k < t->n_prefixes; k++)
                FUZZ_CHECK(t->prefixes[k].len >= 1 &&
                           t->prefixes[k].len <= TOKEN_PREFIX_MAX);
        }
        check_lookups(set, text, flen);
    }

    if (set) {
        for (size_t i = 0; i < set->n && i < 8; i++)
            check_keys(&set->t[i], &f);
    }
    tokens_free(set);
    return 0;
}
