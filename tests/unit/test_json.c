/* test_json.c - the strict JSON reader: what it accepts and refuses,
 * strings as bytes (\u0000, surrogate pairs), exact 64-bit integers, the
 * last of repeated members, nesting limits, walking without a tree, and
 * lengths honoured without a NUL terminator. */
#include <stdlib.h>

#include "http_parse.h"
#include "json.h"
#include "test.h"

static int parse(const char *doc, struct json_val *root)
{
    return json_parse(doc, strlen(doc), root);
}

static bool valid(const char *doc)
{
    struct json_val root;
    return parse(doc, &root) == 0;
}

TEST(accepts_rfc8259)
{
    static const char *const good[] = {
        "{}",
        " [ ] ",
        "0",
        "-0",
        "-12.5e+3",
        "1E9",
        "\"\"",
        "true",
        "false",
        "null",
        "{\"a\":[1,{\"b\":null},\"c\",true,false,-0.0]}",
        "{\"\\u00e9\\ud83d\\ude00\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"}",
        "\t\r\n{ \"a\" : 1 , \"a\" : 2 }\n",
        "\"raw \xff\xfe bytes are kept\"",
        "\"\\ud800\\udc00 \\udbff\\udfff\"", /* the first and last pairs */
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(good); i++) {
        if (!valid(good[i]))
            fprintf(stderr, "    refused %s\n", good[i]);
        CHECK(valid(good[i]));
    }
}

TEST(refuses_the_rest)
{
    static const char *const bad[] = {
        "",
        " ",
        "{",
        "{\"a\":1,}",
        "[1,]",
        "[1 2]",
        "{a:1}",
        "{'a':1}",
        "{\"a\" 1}",
        "01",
        "+1",
        "1.",
        ".5",
        "1e",
        "-",
        "0x10",
        "NaN",
        "Infinity",
        "tru",
        "nul",
        "\"\\q\"",
        "\"\\u12\"",
        "\"\\ud800\"",
        "\"\\ud800\\u0041\"",
        "\"\\udc00\"",
        "\"unterminated",
        "\"ends in a backslash\\",
        "[\"ends in a backslash\\",
        "\"tab\tinside\"",
        "\"nl\ninside\"",
        "{} x",
        "{}{}",
        "[]]",
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        if (valid(bad[i]))
            fprintf(stderr, "    accepted %s\n", bad[i]);
        CHECK(!valid(bad[i]));
    }
    /* A NUL byte outside a string is not white space. */
    struct json_val root;
    CHECK_EQ_INT(json_parse("{}\0", 3, &root), PZ_EINVAL);
    /* The length is honoured: no NUL terminator needed. */
    CHECK_EQ_INT(json_parse("[1]garbage", 3, &root), 0);
    CHECK_EQ_INT(root.type, JSON_ARRAY);
    CHECK_EQ_INT(root.len, 3);
}

TEST(nesting_limit)
{
    struct pz_buf b;
    struct json_val root;
    pz_buf_init(&b);
    /* 63 arrays hold a number: the number is at level 64. */
    for (int i = 0; i < JSON_MAX_DEPTH - 1; i++)
        pz_buf_append(&b, "[", 1);
    pz_buf_append(&b, "1", 1);
    for (int i = 0; i < JSON_MAX_DEPTH - 1; i++)
        pz_buf_append(&b, "]", 1);
    CHECK_EQ_INT(json_parse(b.data, b.len, &root), 0);
    /* One level more is refused, and so is a deep attack. */
    pz_buf_reset(&b);
    for (int i = 0; i < JSON_MAX_DEPTH; i++)
        pz_buf_append(&b, "[", 1);
    pz_buf_append(&b, "1", 1);
    for (int i = 0; i < JSON_MAX_DEPTH; i++)
        pz_buf_append(&b, "]", 1);
    CHECK_EQ_INT(json_parse(b.data, b.len, &root), PZ_EINVAL);
    pz_buf_reset(&b);
    for (int i = 0; i < 100000; i++)
        pz_buf_append(&b, "{\"a\":", 5);
    CHECK_EQ_INT(json_parse(b.data, b.len, &root), PZ_EINVAL);
    pz_buf_free(&b);
}

TEST(strings_are_bytes)
{
    struct json_val root, v;
    const char *doc = "{\"k\":\"a\\u0000b\\u00e9\\ud83d\\ude00\\n\"}";
    CHECK_EQ_INT(parse(doc, &root), 0);
    CHECK(json_get(&root, "k", &v));
    CHECK_EQ_INT(v.type, JSON_STRING);
    size_t len;
    char *s = json_strdup(&v, &len);
    CHECK_EQ_INT(len, 10);
    CHECK(memcmp(s, "a\0b\xc3\xa9\xf0\x9f\x98\x80\n", 10) == 0);
    CHECK_EQ_INT(s[len], '\0');
    pz_free(s);
    /* The pairs at both ends of the surrogate ranges: U+10000, U+10FFFF. */
    CHECK_EQ_INT(parse("\"\\ud800\\udc00\\udbff\\udfff\"", &v), 0);
    s = json_strdup(&v, &len);
    CHECK_EQ_INT(len, 8);
    CHECK(memcmp(s, "\xf0\x90\x80\x80\xf4\x8f\xbf\xbf", 8) == 0);
    pz_free(s);
    /* Every short escape: a key "a/b" may come as "a\/b". */
    CHECK_EQ_INT(parse("\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", &v), 0);
    s = json_strdup(&v, &len);
    CHECK_EQ_INT(len, 8);
    CHECK(memcmp(s, "\"\\/\b\f\n\r\t", 8) == 0);
    pz_free(s);
    /* The empty string is an empty, NUL-terminated copy. */
    CHECK_EQ_INT(parse("\"\"", &v), 0);
    s = json_strdup(&v, &len);
    CHECK_EQ_INT(len, 0);
    CHECK_EQ_STR(s, "");
    pz_free(s);
    CHECK(json_str_is(&v, "", 0));
}

/* Strings are checked eight bytes at a time: a control byte, a quote or
 * a backslash is seen at every offset within and across words, and bytes
 * that differ from them only in the high bit (0x80-0x9f, 0xa2, 0xdc) are
 * plain. */
TEST(string_word_scan)
{
    static const unsigned char plain[] = {'a', 0x80, 0x9f, 0xa2, 0xdc, 0xff,
                                          0x20, 0x7f, '~', 0x81, 0xa0, 'z'};
    for (size_t at = 0; at < 24; at++) {
        char doc[40];
        size_t n = 0;
        doc[n++] = '"';
        for (size_t i = 0; i < 26; i++)
            doc[n++] = (char)plain[i % sizeof plain];
        doc[n++] = '"';
        struct json_val v;
        /* All plain: accepted, copied as is. */
        CHECK_EQ_INT(json_parse(doc, n, &v), 0);
        size_t len;
        char *s = json_strdup(&v, &len);
        CHECK_EQ_INT(len, 26);
        CHECK(memcmp(s, doc + 1, 26) == 0);
        pz_free(s);
        /* A raw control byte (0x00, 0x01, 0x1f) anywhere: refused. */
        static const char ctl[] = {0x00, 0x01, 0x1f};
        for (size_t k = 0; k < sizeof ctl; k++) {
            char bad[40];
            memcpy(bad, doc, n);
            bad[1 + at] = ctl[k];
            CHECK(json_parse(bad, n, &v) != 0);
        }
        /* A quote ends the string early: the rest is not JSON. */
        char q[40];
        memcpy(q, doc, n);
        q[1 + at] = '"';
        CHECK(json_parse(q, n, &v) != 0);
        /* An escape is found and decoded wherever it starts. */
        char e[40];
        memcpy(e, doc, n);
        e[1 + at] = '\\';
        e[2 + at] = 'n';
        CHECK_EQ_INT(json_parse(e, n, &v), 0);
        s = json_strdup(&v, &len);
        CHECK_EQ_INT(len, 25);
        CHECK_EQ_INT(s[at], '\n');
        CHECK(memcmp(s, doc + 1, at) == 0);
        CHECK(memcmp(s + at + 1, doc + 3 + at, 25 - at - 1) == 0);
        pz_free(s);
        /* An unknown escape is refused wherever it starts. */
        e[1 + at] = '\\';
        e[2 + at] = 'x';
        CHECK(json_parse(e, n, &v) != 0);
    }
}

TEST(members)
{
    struct json_val root, v;
    /* The last of repeated members counts; escaped names match their
     * decoded form; nested members are not top-level ones. */
    const char *doc = "{\"x\":{\"key\":1},\"key\":\"a\",\"k\\u0065y\":\"b\","
                      "\"keys\":\"c\",\"KEY\":\"d\",\"y\":[\"key\"]}";
    CHECK_EQ_INT(parse(doc, &root), 0);
    CHECK(json_get(&root, "key", &v));
    CHECK_EQ_INT(v.type, JSON_STRING);
    CHECK(json_str_is(&v, "b", 1));
    CHECK(!json_get(&root, "ke", &v));
    CHECK(!json_get(&root, "nope", &v));
    CHECK(json_get(&root, "x", &v));
    CHECK_EQ_INT(v.type, JSON_OBJECT);
    CHECK(json_get(&v, "key", &v));
    CHECK_EQ_INT(v.type, JSON_NUMBER);
    /* A name with a NUL byte matches only that name. */
    CHECK_EQ_INT(parse("{\"a\\u0000b\":1}", &root), 0);
    CHECK(!json_get(&root, "a", &v));
    /* Not an object: no members. */
    CHECK_EQ_INT(parse("[\"key\",1]", &root), 0);
    CHECK(!json_get(&root, "key", &v));
}

TEST(walk)
{
    struct json_val root, name, v;
    struct json_iter it;
    const char *doc = " [ 1 , \"two\" , { \"three\" : [ 3 ] } , [ ] , null ,"
                      "true,false,\"]}\\\"\" ] ";
    CHECK_EQ_INT(parse(doc, &root), 0);
    static const enum json_type want[] = {JSON_NUMBER, JSON_STRING, JSON_OBJECT,
                                          JSON_ARRAY,  JSON_NULL,   JSON_TRUE,
                                          JSON_FALSE,  JSON_STRING};
    static const char *const text[] = {
        "1",     "\"two\"",   "{ \"three\" : [ 3 ] }", "[ ]", "null", "true",
        "false", "\"]}\\\"\""};
    size_t n = 0;
    json_iter_init(&it, &root);
    while (json_iter_next(&it, NULL, &v)) {
        CHECK(n < PZ_ARRAY_SIZE(want));
        CHECK_EQ_INT(v.type, want[n]);
        CHECK_EQ_INT(v.len, strlen(text[n]));
        CHECK(memcmp(v.s, text[n], v.len) == 0);
        n++;
    }
    CHECK_EQ_INT(n, PZ_ARRAY_SIZE(want));
    /* Members, with names. */
    CHECK_EQ_INT(parse("{\"a\":1,\"b\":{\"c\":2}}", &root), 0);
    json_iter_init(&it, &root);
    CHECK(json_iter_next(&it, &name, &v));
    CHECK(json_str_is(&name, "a", 1));
    CHECK(json_iter_next(&it, &name, &v));
    CHECK(json_str_is(&name, "b", 1));
    CHECK_EQ_INT(v.type, JSON_OBJECT);
    CHECK(!json_iter_next(&it, &name, &v));
    /* Scalars and empty containers walk nothing. */
    CHECK_EQ_INT(parse("{}", &root), 0);
    json_iter_init(&it, &root);
    CHECK(!json_iter_next(&it, &name, &v));
    CHECK_EQ_INT(parse("7", &root), 0);
    json_iter_init(&it, &root);
    CHECK(!json_iter_next(&it, &name, &v));
}

TEST(walk_backslash_runs)
{
    /* A quote ends a string only after an even run of backslashes: the
     * walk must agree with the check on where each value ends. */
    struct json_val root, name, v;
    struct json_iter it;
    const char *doc = "{\"a\":\"x\\\\\",\"b\":\"\\\"\",\"c\":\"\\\\\\\"q\","
                      "\"d\\\\\":\"\\\\\\\\\",\"key\":\"k\"}";
    static const char *const names[] = {"a", "b", "c", "d\\", "key"};
    static const char *const text[] = {"\"x\\\\\"", "\"\\\"\"",
                                       "\"\\\\\\\"q\"", "\"\\\\\\\\\"",
                                       "\"k\""};
    CHECK_EQ_INT(parse(doc, &root), 0);
    size_t n = 0;
    json_iter_init(&it, &root);
    while (json_iter_next(&it, &name, &v)) {
        CHECK(n < PZ_ARRAY_SIZE(text));
        CHECK(json_str_is(&name, names[n], strlen(names[n])));
        CHECK_EQ_INT(v.type, JSON_STRING);
        CHECK_EQ_INT(v.len, strlen(text[n]));
        CHECK(memcmp(v.s, text[n], v.len) == 0);
        n++;
    }
    CHECK_EQ_INT(n, PZ_ARRAY_SIZE(text));
    CHECK(json_get(&root, "key", &v));
    CHECK(json_str_is(&v, "k", 1));
    /* Long plain runs around the specials, and a control byte after one. */
    char big[300];
    memset(big, 'v', sizeof big);
    memcpy(big, "[\"", 2);
    memcpy(big + 150, "\\\"", 2);
    memcpy(big + sizeof big - 2, "\"]", 2);
    CHECK_EQ_INT(json_parse(big, sizeof big, &root), 0);
    big[200] = '\n';
    CHECK(json_parse(big, sizeof big, &root) < 0);
}

static int u64_of(const char *num, uint64_t *out)
{
    struct json_val v;
    *out = 12345;
    if (parse(num, &v) < 0)
        return -1;
    return json_u64(&v, out);
}

TEST(u64_exact)
{
    uint64_t x;
    CHECK_EQ_INT(u64_of("0", &x), 0);
    CHECK(x == 0);
    CHECK_EQ_INT(u64_of("18446744073709551615", &x), 0);
    CHECK(x == UINT64_MAX);
    CHECK_EQ_INT(u64_of("9007199254740993", &x), 0);
    CHECK(x == 9007199254740993ull);
    static const char *const bad[] = {"-1",
                                      "-0",
                                      "1.0",
                                      "1e2",
                                      "\"3\"",
                                      "true",
                                      "null",
                                      "[1]",
                                      "18446744073709551616",
                                      "99999999999999999999"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        CHECK_EQ_INT(u64_of(bad[i], &x), PZ_EINVAL);
        CHECK(x == 12345);
    }
}

/* json_put_string(s) read back by json_parse() gives s, except that
 * bytes that are not UTF-8 come back as U+FFFD. */
static void put_check(const char *s, size_t n, const char *want_json)
{
    struct pz_buf b;
    pz_buf_init(&b);
    json_put_string(&b, s, n);
    pz_buf_append(&b, "", 1);
    CHECK_EQ_STR(b.data, want_json);
    struct json_val v;
    CHECK_EQ_INT(json_parse(b.data, b.len - 1, &v), 0);
    CHECK(v.type == JSON_STRING);
    pz_buf_free(&b);
}

TEST(put_string)
{
    put_check("", 0, "\"\"");
    put_check("plain é €", 12, "\"plain é €\"");
    put_check("q\"b\\", 4, "\"q\\\"b\\\\\"");
    put_check("\n\t\x01\x1f\x7f", 5,
              "\"\\u000a\\u0009\\u0001\\u001f\\u007f\"");
    put_check("a\0b", 3, "\"a\\u0000b\"");
    /* inside a run of printable ASCII, ' ' and '~' stay, controls and
     * DEL do not */
    put_check("a\x1f b~\x7f"
              "c\xc3\xa9",
              9, "\"a\\u001f b~\\u007fc\xc3\xa9\"");
    /* not UTF-8: a stray continuation, a lead byte cut short, an overlong
     * form, a surrogate, a code point over U+10FFFF, 0xff */
    put_check("\x80", 1, "\"\\ufffd\"");
    put_check("x\xc3", 2, "\"x\\ufffd\"");
    put_check("\xc0\xaf", 2, "\"\\ufffd\\ufffd\"");
    put_check("\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\"");
    put_check("\xf4\x90\x80\x80", 4,
              "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
    put_check("\xff\xe2\x82\xac", 4, "\"\\ufffd€\"");
    put_check("\xf0\x9f\x98\x80", 4, "\"\xf0\x9f\x98\x80\"");
    /* The first and last code points of each length are kept; the same
     * code point one byte longer than it needs is overlong. */
    static const char *const kept[] = {
        "\xc2\x80",         "\xdf\xbf",         /* U+0080, U+07FF */
        "\xe0\xa0\x80",     "\xef\xbf\xbf",     /* U+0800, U+FFFF */
        "\xed\x9f\xbf",     "\xee\x80\x80",     /* U+D7FF, U+E000 */
        "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf", /* U+10000, U+10FFFF */
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(kept); i++) {
        char want[8];
        snprintf(want, sizeof want, "\"%s\"", kept[i]);
        put_check(kept[i], strlen(kept[i]), want);
    }
    put_check("\xc1\xbf", 2, "\"\\ufffd\\ufffd\"");
    put_check("\xe0\x9f\xbf", 3, "\"\\ufffd\\ufffd\\ufffd\"");
    put_check("\xf0\x8f\xbf\xbf", 4, "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
    /* every byte value alone gives valid JSON */
    for (int c = 0; c < 256; c++) {
        char one = (char)c;
        struct pz_buf b;
        pz_buf_init(&b);
        json_put_string(&b, &one, 1);
        struct json_val v;
        CHECK_EQ_INT(json_parse(b.data, b.len, &v), 0);
        CHECK(pz_utf8_valid(b.data, b.len));
        pz_buf_free(&b);
    }
}

/* json_flat reads an object of plain strings in one pass, as json_parse
 * and json_iter_next would, and leaves everything else to them. */
TEST(flat)
{
    struct json_val n[3], v[3];
    static const char doc[] = " {\"key\" : \"k\xff\",\"value\":\"\",\"key\":\"x\"}\n";
    CHECK_EQ_INT(json_flat(doc, strlen(doc), n, v, 3), 3);
    CHECK(json_str_is(&n[0], "key", 3) && json_str_is(&v[0], "k\xff", 2));
    CHECK(json_str_is(&n[1], "value", 5) && json_str_is(&v[1], "", 0));
    CHECK(json_str_is(&n[2], "key", 3) && json_str_is(&v[2], "x", 1));
    CHECK(v[2].s == strstr(doc, "\"x\"") && v[2].len == 3);
    CHECK_EQ_INT(json_flat(" { } ", 5, n, v, 3), 0);
    /* The length is honoured: no NUL terminator needed. */
    CHECK_EQ_INT(json_flat("{\"a\":\"b\"}x", 9, n, v, 3), 1);
    static const char *const other[] = {
        "{\"a\":\"b\",\"c\":\"d\",\"e\":\"f\",\"g\":\"h\"}", /* over max */
        "{\"a\":\"\\n\"}",   /* an escape: json_parse's */
        "{\"\\u0061\":\"b\"}",
        "{\"a\":1}",       /* not a string */
        "{\"a\":\"b\",\"c\":{}}",
        "[\"a\"]",         /* not an object */
        "\"a\"",
        "",                  /* not JSON */
        "{",
        "{\"a\"}",
        "{\"a\":\"b\",}",
        "{\"a\":\"b\" \"c\":\"d\"}",
        "{\"a\":\"b\"} x",
        "{\"a\":\"b\"}}",
        "{\"a\":\"b",
        "{\"a\":\"tab\there\"}",
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(other); i++) {
        if (json_flat(other[i], strlen(other[i]), n, v, 3) >= 0)
            fprintf(stderr, "    read %s\n", other[i]);
        CHECK(json_flat(other[i], strlen(other[i]), n, v, 3) < 0);
    }
    /* A raw NUL is a control character. */
    CHECK_EQ_INT(json_flat("{\"a\":\"\0\"}", 9, n, v, 3), -1);
}

/* Every proper prefix of a document, in a buffer of exactly its length
 * (so that a sanitizer build sees a read past it), is refused by
 * json_parse and by json_flat, even when the byte past the length would
 * complete it. */
TEST(truncated_documents_refused)
{
    static const char *const docs[] = {
        "{}",
        "[]",
        "[[]]",
        "{\"a\":[]}",
        "{\"a\":\"b\"}",
        "{\"a\":\"b\",\"c\":\"d\"}",
        "[\"x\\u00e9\",{\"k\":null}]",
        "\"\\ud83d\\ude00\"",
    };
    struct json_val root, n[3], v[3];
    for (size_t i = 0; i < PZ_ARRAY_SIZE(docs); i++) {
        size_t len = strlen(docs[i]);
        CHECK_EQ_INT(json_parse(docs[i], len, &root), 0);
        for (size_t cut = 0; cut < len; cut++) {
            char *copy = test_exact_copy(docs[i], cut);
            CHECK_EQ_INT(json_parse(copy, cut, &root), PZ_EINVAL);
            CHECK_EQ_INT(json_flat(copy, cut, n, v, 3), -1);
            pz_free(copy);
            CHECK_EQ_INT(json_parse(docs[i], cut, &root), PZ_EINVAL);
            CHECK_EQ_INT(json_flat(docs[i], cut, n, v, 3), -1);
        }
    }
}

static const struct test_case cases[] = {
    TEST_ENTRY(put_string),
    TEST_ENTRY(truncated_documents_refused),
    TEST_ENTRY(accepts_rfc8259),
    TEST_ENTRY(refuses_the_rest),
    TEST_ENTRY(nesting_limit),
    TEST_ENTRY(strings_are_bytes),
    TEST_ENTRY(string_word_scan),
    TEST_ENTRY(members),
    TEST_ENTRY(walk),
    TEST_ENTRY(walk_backslash_runs),
    TEST_ENTRY(flat),
    TEST_ENTRY(u64_exact),
    TEST_END};

const struct test_suite suite_json = {"json", cases};
