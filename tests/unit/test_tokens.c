/* test_tokens.c - the client token file parser (tokens.h): the format,
 * every refusal with its line, lookup by digest, and the key and range
 * checks of prefix-limited tokens. */
#include <string.h>

#include "err.h"
#include "pz.h"
#include "sha256.h"
#include "tokens.h"
#include "test.h"

#define T1 "0123456789abcdef"
#define T2 "fedcba9876543210xyz"
#define T3 "tok3-tok3-tok3-tok3"

static struct token_set *parse_ok(const char *text)
{
    struct token_set *s = NULL;
    size_t line = 99;
    char why[256] = "";
    int rv = tokens_parse(text, strlen(text), &s, &line, why, sizeof why);
    if (rv != 0)
        fprintf(stderr, "    unexpected refusal: line %zu: %s\n", line, why);
    return s;
}

/* The line a refusal names, and its reason in why. */
static size_t refused(const char *text, size_t len, char *why, size_t wl)
{
    struct token_set *s = NULL;
    size_t line = 0;
    int rv = tokens_parse(text, len, &s, &line, why, wl);
    if (rv != PZ_EINVAL || s != NULL)
        return 1000;
    return line;
}

TEST(format)
{
    struct token_set *s =
        parse_ok("# comment\n"
                 "\n"
                 "app1 rw " T1 " app1/ shared%2fx\r\n"
                 "   # indented comment\n"
                 "grafana\tro\t" T2 "\n"
                 "bin rw " T3 " %00%ff%25");
    CHECK(s != NULL);
    CHECK_EQ_INT(s->n, 3);
    CHECK_EQ_STR(s->t[0].name, "app1");
    CHECK_EQ_INT(s->t[0].rights, TOKEN_READ | TOKEN_WRITE);
    CHECK_EQ_INT(s->t[0].n_prefixes, 2);
    CHECK(s->t[0].prefixes[1].len == 8 &&
          memcmp(s->t[0].prefixes[1].p, "shared/x", 8) == 0);
    CHECK_EQ_STR(s->t[1].name, "grafana");
    CHECK_EQ_INT(s->t[1].rights, TOKEN_READ);
    CHECK(!token_restricted(&s->t[1]));
    CHECK_EQ_INT(s->t[2].prefixes[0].len, 3);
    CHECK(memcmp(s->t[2].prefixes[0].p, "\x00\xff%", 3) == 0);
    CHECK(tokens_find(s, T1, strlen(T1)) == &s->t[0]);
    CHECK(tokens_find(s, T2, strlen(T2)) == &s->t[1]);
    CHECK(tokens_find(s, T3, strlen(T3)) == &s->t[2]);
    CHECK(tokens_find(s, T1 "x", strlen(T1) + 1) == NULL);
    CHECK(tokens_find(s, T1, strlen(T1) - 1) == NULL);
    CHECK(tokens_find(s, "", 0) == NULL);
    /* the whole digest decides: a wrong token whose digest begins as
     * T1's (two bytes, found by trying) is still unknown */
    uint8_t want[SHA256_SIZE], d[SHA256_SIZE];
    struct sha256 h;
    sha256_init(&h);
    sha256_update(&h, T1, strlen(T1));
    sha256_final(&h, want);
    char guess[32];
    bool found = false;
    for (unsigned i = 0; i < 4000000 && !found; i++) {
        snprintf(guess, sizeof guess, "guess-%010u", i);
        sha256_init(&h);
        sha256_update(&h, guess, strlen(guess));
        sha256_final(&h, d);
        found = d[0] == want[0] && d[1] == want[1];
    }
    CHECK(found);
    CHECK(tokens_find(s, guess, strlen(guess)) == NULL);
    tokens_free(s);
    s = parse_ok("");
    CHECK(s != NULL);
    CHECK_EQ_INT(s->n, 0);
    CHECK(tokens_find(s, T1, strlen(T1)) == NULL);
    tokens_free(s);
}

TEST(refusals)
{
    char why[256];
    static const struct {
        const char *text;
        size_t line;
        const char *why;
    } cases[] = {
        {"a rw\n", 1, "want NAME"},
        {"# x\na rx " T1 "\n", 2, "rights must be ro or rw"},
        {"a RW " T1 "\n", 1, "rights must be ro or rw"},
        {"a rw short\n", 1, "16 to 256"},
        {"a/b rw " T1 "\n", 1, "a name is letters"},
        {"a rw " T1 "\nb ro " T1 "\n", 2, "repeats the token of 'a'"},
        {"a rw " T1 "\na ro " T2 "\n", 2, "name 'a' is used twice"},
        {"a rw " T1 " p%zz\n", 1, "bad %XX escape"},
        {"a rw " T1 " p%2\n", 1, "bad %XX escape"},
        {"a rw " T1 " p\x80\n", 1, "printable ASCII"},
        {"a rw " T1 "\x7f\n", 1, "printable ASCII"},
        {"a rw " T1 " 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 "
         "22 23 24 25 26 27 28 29 30 31 32 33\n",
         1, "more than 32 prefixes"},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(cases); i++) {
        why[0] = '\0';
        size_t line = refused(cases[i].text, strlen(cases[i].text), why,
                              sizeof why);
        if (line != cases[i].line || !strstr(why, cases[i].why))
            fprintf(stderr, "    case %zu: line %zu: %s\n", i, line, why);
        CHECK_EQ_INT(line, cases[i].line);
        CHECK(strstr(why, cases[i].why) != NULL);
        /* a refusal never shows a token */
        CHECK(strstr(why, T1) == NULL);
    }
    const char nul[] = "a rw " T1 "\nb ro\0" T2 "\n";
    CHECK_EQ_INT(refused(nul, sizeof nul - 1, why, sizeof why), 2);
    CHECK(strstr(why, "NUL") != NULL);
    /* 32 prefixes are fine; a prefix of 1024 bytes too, not 1025 */
    char big[2200];
    int n = snprintf(big, sizeof big, "a rw " T1 " ");
    memset(big + n, 'k', 1024);
    big[n + 1024] = '\0';
    struct token_set *s = parse_ok(big);
    CHECK(s != NULL);
    tokens_free(s);
    big[n + 1024] = 'k';
    big[n + 1025] = '\0';
    CHECK_EQ_INT(refused(big, strlen(big), why, sizeof why), 1);
    CHECK(strstr(why, "1024 bytes") != NULL);
    /* a file over the limit */
    CHECK_EQ_INT(refused("", TOKENS_FILE_MAX + 1, why, sizeof why), 0);
}

#define K(s) (const uint8_t *)(s), strlen(s)

TEST(prefixes)
{
    struct token_set *s = parse_ok("a rw " T1 " app/ zz%ff\n"
                                   "b ro " T2 " %ff%ff\n"
                                   "c rw " T3 "\n");
    CHECK(s != NULL);
    const struct token *a = &s->t[0], *b = &s->t[1], *c = &s->t[2];
    CHECK(token_restricted(a));
    CHECK(token_key_ok(a, K("app/")));
    CHECK(token_key_ok(a, K("app/x")));
    CHECK(!token_key_ok(a, K("app")));
    CHECK(!token_key_ok(a, K("apq/")));
    CHECK(!token_key_ok(a, K("")));
    CHECK(token_key_ok(c, K("")));
    /* ranges within app/: [app/, app0) at most */
    CHECK(token_range_ok(a, K("app/"), K("app0"), false));
    CHECK(token_range_ok(a, K("app/a"), K("app/b"), false));
    CHECK(!token_range_ok(a, K("app/"), (const uint8_t *)"app0\x00", 5,
                          false));
    CHECK(!token_range_ok(a, K("app/"), K("b"), false));
    CHECK(!token_range_ok(a, K("app"), K("app/z"), false));
    CHECK(!token_range_ok(a, K("app/"), NULL, 0, true));
    /* zz\xff: its end is "z{" */
    CHECK(token_range_ok(a, K("zz\xff"), K("z{"), false));
    CHECK(!token_range_ok(a, K("zz\xff"), K("z{\x01"), false));
    /* a prefix of 0xff bytes has no end: every key from it on */
    CHECK(token_range_ok(b, K("\xff\xff"), NULL, 0, true));
    CHECK(token_range_ok(b, K("\xff\xff\x01"), K("\xff\xff\xff\xff"), false));
    CHECK(!token_range_ok(b, K("\xff\xfe"), NULL, 0, true));
    CHECK(token_range_ok(c, K(""), NULL, 0, true));
    tokens_free(s);
}

/* A repeated name or token refuses the file at the first line repeating
 * an earlier one, whatever comes after it, with the earliest line it
 * repeats: its name before its token. */
TEST(repeats)
{
    char why[256];
    static const struct {
        const char *text;
        size_t line;
        const char *why;
    } cases[] = {
        /* the later line is named, blank and comment lines counted */
        {"a rw " T1 "\n# x\n\nb ro " T2 "\nc ro " T1 "\n", 5,
         "token 'c' repeats the token of 'a'"},
        {"a rw " T1 "\nb ro " T2 "\nc ro " T3 "\nb rw " T3 "x\n", 4,
         "name 'b' is used twice"},
        /* two repeats: the first line repeating one is refused */
        {"a rw " T1 "\nb ro " T2 "\nb rw " T3 "\nc ro " T1 "\n", 3,
         "name 'b' is used twice"},
        {"a rw " T1 "\nb ro " T2 "\nc ro " T1 "\nb rw " T3 "\n", 3,
         "token 'c' repeats the token of 'a'"},
        /* a line repeating two: the earlier of the two decides */
        {"a rw " T1 "\nb ro " T2 "\nb ro " T1 "\n", 3,
         "token 'b' repeats the token of 'a'"},
        {"a rw " T1 "\nb ro " T2 "\na ro " T2 "\n", 3,
         "name 'a' is used twice"},
        {"a rw " T1 "\na ro " T1 "\n", 2, "name 'a' is used twice"},
        /* the first of three of a kind is the one repeated */
        {"x ro " T3 "\na rw " T1 "\nb ro " T1 "\nc ro " T1 "\n", 3,
         "token 'b' repeats the token of 'a'"},
        /* a repeat before a bad line is refused first, after it not */
        {"a rw " T1 "\nb ro " T1 "\nc rx " T2 "\n", 2, "repeats"},
        {"a rw " T1 "\nc rx " T2 "\nb ro " T1 "\n", 2, "rights must be"},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(cases); i++) {
        why[0] = '\0';
        size_t line =
            refused(cases[i].text, strlen(cases[i].text), why, sizeof why);
        if (line != cases[i].line || !strstr(why, cases[i].why))
            fprintf(stderr, "    case %zu: line %zu: %s\n", i, line, why);
        CHECK_EQ_INT(line, cases[i].line);
        CHECK(strstr(why, cases[i].why) != NULL);
    }
    const char nul[] = "a rw " T1 "\nb ro " T1 "\nc ro\0" T2 "\n";
    CHECK_EQ_INT(refused(nul, sizeof nul - 1, why, sizeof why), 2);
    CHECK(strstr(why, "token 'b' repeats the token of 'a'") != NULL);
}

/* Line i of a file of n tokens (name and token unique to i, the names
 * not in file order) appended to b. */
static void scale_line(struct pz_buf *b, size_t i, const char *tok)
{
    char l[128];
    int n = snprintf(l, sizeof l, "client-%05zu %s %s\n", i * 7919 % 10000,
                     i % 2 ? "ro" : "rw", tok);
    pz_buf_append(b, l, (size_t)n);
}

static void scale_token(char *tok, size_t size, size_t i)
{
    snprintf(tok, size, "tok-%05zu-0123456789abcdef", i);
}

/* A file of TOKENS_MAX tokens: parsed with n log n comparisons of names
 * and digests, not the n * n / 2 (50 million) of comparing every line
 * with each earlier one, which held the event loop for a quarter of a
 * second on every reload; each token found with at most log2 n + 1
 * digest comparisons, not n on every request, an unknown token too. The
 * counts (tokens_compares) stand in for the time, which a loaded machine
 * or a sanitizer would blur. */
TEST(scale)
{
    struct pz_buf b;
    pz_buf_init(&b);
    char tok[64];
    for (size_t i = 0; i < TOKENS_MAX; i++) {
        scale_token(tok, sizeof tok, i);
        scale_line(&b, i, tok);
    }
    CHECK(b.len <= TOKENS_FILE_MAX);
    struct token_set *s = NULL;
    size_t line = 0;
    char why[256] = "";
    unsigned long before = tokens_compares;
    int rv = tokens_parse(b.data, b.len, &s, &line, why, sizeof why);
    unsigned long parse = tokens_compares - before;
    if (rv != 0)
        fprintf(stderr, "    refused: line %zu: %s\n", line, why);
    CHECK_EQ_INT(rv, 0);
    CHECK_EQ_INT(s->n, TOKENS_MAX);
    /* two sorts of 10,000 (about 14 comparisons a token each) and a pass
     * over each: some 300,000 */
    if (parse >= 1000000)
        fprintf(stderr, "    parse: %lu comparisons\n", parse);
    CHECK(parse < 1000000);
    unsigned long most = 0;
    for (size_t i = 0; i < TOKENS_MAX; i++) {
        scale_token(tok, sizeof tok, i);
        char name[32];
        snprintf(name, sizeof name, "client-%05zu", i * 7919 % 10000);
        before = tokens_compares;
        const struct token *t = tokens_find(s, tok, strlen(tok));
        unsigned long n = tokens_compares - before;
        most = n > most ? n : most;
        CHECK(t == &s->t[i]);
        CHECK_EQ_STR(t->name, name);
        CHECK_EQ_INT(t->line, i + 1);
        CHECK_EQ_INT(t->rights, i % 2 ? TOKEN_READ : TOKEN_READ | TOKEN_WRITE);
        /* an unknown token, one character off, as cheap and refused */
        tok[strlen(tok) - 1] = 'g';
        before = tokens_compares;
        CHECK(tokens_find(s, tok, strlen(tok)) == NULL);
        n = tokens_compares - before;
        most = n > most ? n : most;
    }
    if (most > 14)
        fprintf(stderr, "    lookup: up to %lu comparisons\n", most);
    CHECK(most <= 14); /* floor(log2 10000) + 1 */
    tokens_free(s);

    /* a repeat on the last line is still found, and named */
    size_t last = b.len - 1;
    while (last > 0 && b.data[last - 1] != '\n')
        last--;
    b.len = last;
    scale_token(tok, sizeof tok, 17);
    scale_line(&b, TOKENS_MAX - 1, tok);
    CHECK_EQ_INT(refused(b.data, b.len, why, sizeof why), TOKENS_MAX);
    CHECK(strstr(why, "repeats the token of 'client-") != NULL);
    /* one token more than TOKENS_MAX */
    b.len = last;
    scale_token(tok, sizeof tok, TOKENS_MAX - 1);
    scale_line(&b, TOKENS_MAX - 1, tok);
    scale_token(tok, sizeof tok, TOKENS_MAX);
    pz_buf_append(&b, "extra ro ", 9);
    pz_buf_append(&b, tok, strlen(tok));
    CHECK_EQ_INT(refused(b.data, b.len, why, sizeof why), TOKENS_MAX + 1);
    CHECK(strstr(why, "more than 10000 tokens") != NULL);
    pz_buf_free(&b);
}

static const struct test_case cases[] = {
    TEST_ENTRY(format),  TEST_ENTRY(refusals), TEST_ENTRY(prefixes),
    TEST_ENTRY(repeats), TEST_ENTRY(scale),    TEST_END,
};

const struct test_suite suite_tokens = {"tokens", cases};
