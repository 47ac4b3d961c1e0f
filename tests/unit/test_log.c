/* test_log.c - the pure part of logging: a line in the text format and in
 * the JSON format (RFC 3339 time with milliseconds in UTC, the level word,
 * the node, the message escaped so that any bytes give valid JSON). */
#include <string.h>

#include "http_parse.h"
#include "json.h"
#include "log.h"
#include "test.h"

/* 2026-01-03T10:00:00Z */
#define T0 ((time_t)1767434400)

static char *line(bool json, int ms, const char *prefix,
                  enum pz_log_level level, const char *msg)
{
    static char out[4096];
    struct pz_buf b;
    pz_buf_init(&b);
    pz_log_format(&b, json, T0, ms, prefix, level, msg);
    pz_buf_append(&b, "", 1);
    snprintf(out, sizeof out, "%s", b.data);
    pz_buf_free(&b);
    return out;
}

TEST(text_line)
{
    CHECK_EQ_STR(line(false, 123, "node1", PZ_LOG_INFO, "hello"),
                 "2026-01-03T10:00:00.123Z node1 I hello\n");
    CHECK_EQ_STR(line(false, 7, "mandi", PZ_LOG_ERROR, "100% bad"),
                 "2026-01-03T10:00:00.007Z mandi E 100% bad\n");
}

TEST(json_line)
{
    CHECK_EQ_STR(line(true, 5, "node1", PZ_LOG_WARNING, "disk \"full\""),
                 "{\"time\":\"2026-01-03T10:00:00.005Z\",\"level\":"
                 "\"warning\",\"node\":\"node1\",\"msg\":\"disk "
                 "\\\"full\\\"\"}\n");
    CHECK_EQ_STR(line(true, 999, "mandi", PZ_LOG_DEBUG, "a\nb\\c"),
                 "{\"time\":\"2026-01-03T10:00:00.999Z\",\"level\":"
                 "\"debug\",\"node\":\"mandi\",\"msg\":\"a\\u000ab\\\\c\"}"
                 "\n");
    static const char *const words[] = {"debug", "info", "warning",
                                        "error"};
    for (int l = 0; l < 4; l++) {
        const char *s = line(true, 0, "n", (enum pz_log_level)l, "m");
        CHECK(strstr(s, words[l]) != NULL);
    }
}

/* Whatever the message holds, the line is one valid JSON object (and
 * valid UTF-8) ending in its only newline. */
TEST(json_line_any_bytes)
{
    char msg[300];
    size_t n = 0;
    for (int c = 1; c < 256; c++)
        msg[n++] = (char)c;
    msg[n] = '\0';
    const char *cuts[] = {msg, "\xe2\x82", "\xff\xfe", "\x1b[31mred",
                          "\"}{\"", "tab\there"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(cuts); i++) {
        const char *s = line(true, 42, "node\x01\xff", PZ_LOG_INFO, cuts[i]);
        size_t len = strlen(s);
        CHECK(len > 0 && s[len - 1] == '\n');
        CHECK(memchr(s, '\n', len - 1) == NULL);
        struct json_val root, v;
        CHECK_EQ_INT(json_parse(s, len - 1, &root), 0);
        CHECK(root.type == JSON_OBJECT);
        CHECK(json_get(&root, "msg", &v) && v.type == JSON_STRING);
        CHECK(json_get(&root, "node", &v) && v.type == JSON_STRING);
        CHECK(pz_utf8_valid(s, len));
    }
}

/* What a client or a peer sent reaches a text line as one line, with no
 * control character: a byte that is neither printable ASCII nor part of a
 * printable UTF-8 character is written \xNN. */
TEST(text_line_any_bytes)
{
    CHECK_EQ_STR(line(false, 1, "n\n1", PZ_LOG_WARNING,
                      "a\nfake line\r\x1b[31mred\x7f"),
                 "2026-01-03T10:00:00.001Z n\\x0a1 W a\\x0afake "
                 "line\\x0d\\x1b[31mred\\x7f\n");
    /* é and € pass; C1 CSI (U+009B), a stray byte, an overlong '/', a
     * surrogate and a cut sequence do not */
    CHECK_EQ_STR(line(false, 1, "n", PZ_LOG_INFO,
                      "\xc3\xa9\xe2\x82\xac|\xc2\x9b|\xff|\xc0\xaf|"
                      "\xed\xa0\x80|\xe2\x82"),
                 "2026-01-03T10:00:00.001Z n I \xc3\xa9\xe2\x82\xac|"
                 "\\xc2\\x9b|\\xff|\\xc0\\xaf|\\xed\\xa0\\x80|"
                 "\\xe2\\x82\n");
    /* nor a line separator or a bidi control, which would show the rest
     * of the line reordered; the characters beside them pass (an em
     * dash, U+2014) */
    CHECK_EQ_STR(line(false, 1, "n", PZ_LOG_INFO,
                      "a\xe2\x80\xa8"
                      "b\xe2\x80\xae"
                      "c\xe2\x81\xa6"
                      "d\xe2\x80\x8f"
                      "e\xd8\x9c"
                      "\xe2\x80\x94"),
                 "2026-01-03T10:00:00.001Z n I a\\xe2\\x80\\xa8"
                 "b\\xe2\\x80\\xae"
                 "c\\xe2\\x81\\xa6"
                 "d\\xe2\\x80\\x8f"
                 "e\\xd8\\x9c"
                 "\xe2\x80\x94\n");
    char msg[256];
    for (int c = 1; c < 256; c++)
        msg[c - 1] = (char)c;
    msg[255] = '\0';
    const char *s = line(false, 1, "n", PZ_LOG_INFO, msg);
    size_t len = strlen(s);
    CHECK(s[len - 1] == '\n');
    for (size_t i = 0; i + 1 < len; i++)
        CHECK((unsigned char)s[i] >= 0x20 && (unsigned char)s[i] < 0x7f);
}

static const struct test_case cases[] = {
    TEST_ENTRY(text_line), TEST_ENTRY(json_line),
    TEST_ENTRY(json_line_any_bytes), TEST_ENTRY(text_line_any_bytes),
    TEST_END};

const struct test_suite suite_log = {"log", cases};
