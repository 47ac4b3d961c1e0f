/* test_mandi.c - mandi's JSON codec (mandi_codec.c), its term rule, the
 * nodes' client of mandi, and pz_escape() (mandi's log lines are its first
 * user).
 *
 * Codec (no sockets): exact 64-bit terms, strict documents, member rules
 * (null, unknown, repeated, escaped names), limits, what ids and addresses
 * may hold, and round trips. The term rule is pure: driven with a made-up
 * clock.
 *
 * Client (a real libuv loop on 127.0.0.1 with a mandi server in the same
 * process, the conn layer flushed from a prepare hook as mandi_run does):
 * every request against the server, pipelining in order, 404, 401, 409,
 * connection refused, timeouts, cancel, free with requests pending, a
 * reconnect after the server closes an idle connection, a server restart,
 * one resend after a lost connection, and malformed, oversized or hostile
 * responses from a raw socket server. Every wait has a deadline. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
#include <uv.h>

#include "conn.h"
#include "log.h"
#include "mandi.h"
#include "mandi_codec.h"
#include "mandi_client.h"
#include "test.h"

/* --- codec ------------------------------------------------------------- */

static int u64_of(const char *doc, uint64_t *v)
{
    *v = 12345;
    return mandi_json_u64(doc, strlen(doc), "term", v);
}

TEST(json_u64)
{
    uint64_t v;
    CHECK_EQ_INT(u64_of("{\"term\":0}", &v), 1);
    CHECK(v == 0);
    CHECK_EQ_INT(u64_of(" { \"id\" : \"a\" , \"term\" : 42 } ", &v), 1);
    CHECK(v == 42);
    CHECK_EQ_INT(u64_of("{\"term\":18446744073709551615}", &v), 1);
    CHECK(v == UINT64_MAX);
    CHECK_EQ_INT(u64_of("{\"term\":9007199254740993}", &v), 1);
    CHECK(v == 9007199254740993ull);
    /* Absent, null, only nested: 0 and v untouched. */
    CHECK_EQ_INT(u64_of("{}", &v), 0);
    CHECK(v == 12345);
    CHECK_EQ_INT(u64_of("{\"term\":null}", &v), 0);
    CHECK_EQ_INT(u64_of("{\"x\":{\"term\":5},\"y\":[{\"term\":6}]}", &v), 0);
    CHECK_EQ_INT(u64_of("{\"x\":\"\\\"term\\\":7\"}", &v), 0);
    CHECK(v == 12345);
    /* Escaped names match; the last of repeated members counts. */
    CHECK_EQ_INT(u64_of("{\"\\u0074e\\u0072m\":8}", &v), 1);
    CHECK(v == 8);
    CHECK_EQ_INT(u64_of("{\"term\":1,\"term\":2}", &v), 1);
    CHECK(v == 2);
    CHECK_EQ_INT(u64_of("{\"ter\\u006d\":3,\"terms\":4,\"TERM\":5}", &v), 1);
    CHECK(v == 3);
    /* Not an unsigned integer. */
    static const char *const bad[] = {
        "{\"term\":-1}",
        "{\"term\":1.0}",
        "{\"term\":1e2}",
        "{\"term\":\"3\"}",
        "{\"term\":true}",
        "{\"term\":[1]}",
        "{\"term\":{}}",
        "{\"term\":-0}",
        "{\"term\":18446744073709551616}",
        "{\"term\":99999999999999999999}",
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        if (u64_of(bad[i], &v) != PZ_EINVAL)
            fprintf(stderr, "    accepted %s\n", bad[i]);
        CHECK_EQ_INT(u64_of(bad[i], &v), PZ_EINVAL);
    }
    /* Not a well-formed object. */
    static const char *const broken[] = {
        "",
        "[]",
        "{\"term\":1",
        "{\"term\":01}",
        "{term:1}",
        "{\"term\":1}x",
        "{\"term\":1,}",
        "\"term\"",
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(broken); i++)
        CHECK_EQ_INT(u64_of(broken[i], &v), PZ_EINVAL);
    /* Length is honoured (no NUL terminator needed). */
    const char *doc = "{\"term\":7}garbage";
    CHECK_EQ_INT(mandi_json_u64(doc, 10, "term", &v), 1);
    CHECK(v == 7);
}

static int leader_of(const char *doc, struct mandi_leader *l, char *why)
{
    return mandi_parse_leader(doc, strlen(doc), l, why, 128);
}

TEST(parse_leader)
{
    struct mandi_leader l;
    char why[128];
    CHECK_EQ_INT(leader_of("{\"id\":\"node1\",\"addr\":\"127.0.0.1:12000\","
                           "\"http_addr\":\"h:1\",\"grpc_addr\":\"g:1\","
                           "\"term\":3,\"updated_at\":\"2026-01-03T10:00:00Z\","
                           "\"other\":[1,{\"id\":\"x\"}]}",
                           &l, why),
                 0);
    CHECK_EQ_STR(l.id, "node1");
    CHECK_EQ_STR(l.addr, "127.0.0.1:12000");
    CHECK_EQ_STR(l.http_addr, "h:1");
    CHECK_EQ_STR(l.grpc_addr, "g:1");
    CHECK(l.term == 3);
    CHECK_EQ_STR(l.updated_at, "2026-01-03T10:00:00Z");
    /* Only id is required; null is absent; a bad updated_at is ignored. */
    CHECK_EQ_INT(
        leader_of("{\"id\":\"a\",\"addr\":null,\"updated_at\":5}", &l, why), 0);
    CHECK_EQ_STR(l.addr, "");
    CHECK_EQ_STR(l.updated_at, "");
    CHECK(l.term == 0);

    static const struct {
        const char *doc, *why;
    } cases[] = {
        {"{", "invalid JSON"},
        {"[{\"id\":\"a\"}]", "invalid JSON"},
        {"{\"id\":\"a\"}{}", "invalid JSON"},
        {"{\"id\":\"a\",}", "invalid JSON"},
        {"{\"id\":\"a\\x\"}", "invalid JSON"},
        {"{}", "missing id"},
        {"{\"id\":\"\"}", "missing id"},
        {"{\"id\":null}", "missing id"},
        {"{\"id\":1}", "'id' must be a string"},
        {"{\"id\":\"a\",\"grpc_addr\":false}", "'grpc_addr' must be a string"},
        {"{\"id\":\"a\\u0000\"}", "'id' holds a NUL character"},
        {"{\"id\":\"a\",\"term\":-5}", "'term' must be an unsigned integer"},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(cases); i++) {
        why[0] = '\0';
        CHECK_EQ_INT(leader_of(cases[i].doc, &l, why), PZ_EINVAL);
        CHECK_EQ_STR(why, cases[i].why);
    }
    /* Length limits: exactly the maximum passes, one more fails. */
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_appendf(&b, "{\"id\":\"%0*d\",\"addr\":\"%0*d:1\"}", MANDI_ID_MAX, 0,
                   MANDI_ADDR_MAX - 2, 0);
    CHECK_EQ_INT(leader_of(b.data, &l, why), 0);
    CHECK_EQ_INT(strlen(l.id), MANDI_ID_MAX);
    CHECK_EQ_INT(strlen(l.addr), MANDI_ADDR_MAX);
    pz_buf_reset(&b);
    pz_buf_appendf(&b, "{\"id\":\"%0*d\"}", MANDI_ID_MAX + 1, 0);
    CHECK_EQ_INT(leader_of(b.data, &l, why), PZ_EINVAL);
    CHECK_EQ_STR(why, "id too long");
    pz_buf_reset(&b);
    pz_buf_appendf(&b, "{\"id\":\"a\",\"http_addr\":\"%0*d\"}",
                   MANDI_ADDR_MAX + 1, 0);
    CHECK_EQ_INT(leader_of(b.data, &l, why), PZ_EINVAL);
    CHECK_EQ_STR(why, "http_addr too long");
    pz_buf_free(&b);
}

/* What ids and addresses may hold: the same rules for a LeaderInfo and a
 * join request, on mandi and in the nodes' client. */
TEST(parse_refuses_control_characters_and_implausible_addresses)
{
    struct mandi_leader l;
    struct mandi_join j;
    char why[128];
    static const struct {
        const char *doc, *why;
    } bad[] = {
        /* Anything that could end or forge a log line, or drive a
         * terminal: C0, DEL, C1 (NEL), separators, bidi controls. */
        {"{\"id\":\"x\\nFAKE LOG LINE\",\"addr\":\"h:1\"}",
         "'id' holds a control character"},
        {"{\"id\":\"x\\r\",\"addr\":\"h:1\"}",
         "'id' holds a control character"},
        {"{\"id\":\"\\u001b[31mred\",\"addr\":\"h:1\"}",
         "'id' holds a control character"},
        {"{\"id\":\"a\\t\",\"addr\":\"h:1\"}",
         "'id' holds a control character"},
        {"{\"id\":\"a\x7f\",\"addr\":\"h:1\"}",
         "'id' holds a control character"},
        {"{\"id\":\"a\\u0085\",\"addr\":\"h:1\"}",
         "'id' holds a control character"},
        {"{\"id\":\"a\\u2028b\",\"addr\":\"h:1\"}",
         "'id' holds a control character"},
        {"{\"id\":\"a\\u202eb\",\"addr\":\"h:1\"}",
         "'id' holds a control character"},
        {"{\"id\":\"a\xff\",\"addr\":\"h:1\"}", "'id' is not valid UTF-8"},
        {"{\"id\":\"a\xc0\xaf\",\"addr\":\"h:1\"}", "'id' is not valid UTF-8"},
        {"{\"id\":\"a\xed\xa0\x80\",\"addr\":\"h:1\"}",
         "'id' is not valid UTF-8"},
        {"{\"id\":\"a\xc3\",\"addr\":\"h:1\"}", "'id' is not valid UTF-8"},
        /* overlong forms of '/' in three and four bytes, a lead byte
         * where a continuation byte belongs, a bidi isolate */
        {"{\"id\":\"a\xe0\x80\xaf\",\"addr\":\"h:1\"}",
         "'id' is not valid UTF-8"},
        {"{\"id\":\"a\xf0\x80\x80\xaf\",\"addr\":\"h:1\"}",
         "'id' is not valid UTF-8"},
        {"{\"id\":\"a\xc3\xc3\",\"addr\":\"h:1\"}", "'id' is not valid UTF-8"},
        {"{\"id\":\"a\\u2066b\",\"addr\":\"h:1\"}",
         "'id' holds a control character"},
        {"{\"id\":\"a\\u061cb\",\"addr\":\"h:1\"}",
         "'id' holds a control character"},
        {"{\"id\":\"a\",\"addr\":\"h:1\\nFAKE\"}",
         "'addr' holds a control character"},
        {"{\"id\":\"a\",\"addr\":\"h:1\",\"grpc_addr\":\"h:\\u0000\"}",
         "'grpc_addr' holds a NUL character"},
        /* Not host:port. */
        {"{\"id\":\"a\",\"addr\":\"127.0.0.1\"}", "'addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"h:0\"}", "'addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"h:65536\"}", "'addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"h:000080\"}", "'addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"h:+1\"}", "'addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"h:\"}", "'addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"a b:1\"}", "'addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"h:1/x\"}", "'addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"http://h:1\"}", "'addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"::1:80\"}", "'addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"[]:80\"}", "'addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"[x:y]:80\"}", "'addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"[::1]x:80\"}", "'addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"[::1%]:80\"}", "'addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"[fe80::1%e;x]:80\"}",
         "'addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"h\xc3\xa9:80\"}",
         "'addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"h:1\",\"http_addr\":\"x\"}",
         "'http_addr' must be host:port"},
        {"{\"id\":\"a\",\"addr\":\"h:1\",\"grpc_addr\":\"g:1;rm\"}",
         "'grpc_addr' must be host:port"},
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad); i++) {
        const char *d = bad[i].doc;
        why[0] = '\0';
        CHECK_EQ_INT(mandi_parse_leader(d, strlen(d), &l, why, sizeof why),
                     PZ_EINVAL);
        CHECK_EQ_STR(why, bad[i].why);
        why[0] = '\0';
        CHECK_EQ_INT(mandi_parse_join(d, strlen(d), &j, why, sizeof why),
                     PZ_EINVAL);
        CHECK_EQ_STR(why, bad[i].why);
    }
    /* Accepted: what nodes send (":8080" is the default http-addr), IPv6,
     * and ids of any printable text, UTF-8 included. */
    static const char *const good[] = {
        "{\"id\":\"node1\",\"addr\":\"127.0.0.1:12000\",\"http_addr\":\":"
        "8080\","
        "\"grpc_addr\":\"localhost:9090\"}",
        "{\"id\":\"a b/c\\\"d\\\\\",\"addr\":\"[::1]:1\"}",
        "{\"id\":\"n\\u00e9\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\",\"addr\":\"[:"
        ":]:65535\"}",
        "{\"id\":\"x\",\"addr\":\"[fe80::1%eth0]:7\",\"grpc_addr\":\"h_1.b-2:"
        "00080\"}",
        "{\"id\":\"x\",\"addr\":\"[::ffff:1.2.3.4]:9\"}",
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(good); i++) {
        const char *d = good[i];
        CHECK_EQ_INT(mandi_parse_leader(d, strlen(d), &l, why, sizeof why), 0);
        CHECK_EQ_INT(mandi_parse_join(d, strlen(d), &j, why, sizeof why), 0);
    }
    CHECK_EQ_STR(j.addr, "[::ffff:1.2.3.4]:9");
    /* A join request needs the address to add the node at; a LeaderInfo
     * may leave it out (as the original program allowed). */
    const char *noaddr = "{\"id\":\"node2\",\"http_addr\":\"h:1\"}";
    CHECK_EQ_INT(mandi_parse_join(noaddr, strlen(noaddr), &j, why, sizeof why),
                 PZ_EINVAL);
    CHECK_EQ_STR(why, "missing addr");
    CHECK_EQ_INT(
        mandi_parse_leader(noaddr, strlen(noaddr), &l, why, sizeof why), 0);
    /* A timestamp that is not printable is dropped, never an error. */
    const char *t = "{\"id\":\"a\",\"addr\":\"h:1\",\"updated_at\":\"2026\\n\","
                    "\"started_at\":\"x\\u0000\"}";
    CHECK_EQ_INT(mandi_parse_leader(t, strlen(t), &l, why, sizeof why), 0);
    CHECK_EQ_STR(l.updated_at, "");
    CHECK_EQ_INT(mandi_parse_join(t, strlen(t), &j, why, sizeof why), 0);
    CHECK_EQ_STR(j.started_at, "");
}

TEST(json_round_trip)
{
    struct mandi_leader a = {.term = UINT64_MAX - 1}, b;
    snprintf(a.id, sizeof a.id, "n\"1\\ \xc3\xa9/x");
    snprintf(a.addr, sizeof a.addr, "[::1]:12000");
    snprintf(a.http_addr, sizeof a.http_addr, "h:1");
    snprintf(a.grpc_addr, sizeof a.grpc_addr, "g:2");
    snprintf(a.updated_at, sizeof a.updated_at, "2026-01-03T10:00:00.5Z");
    struct pz_buf j;
    char why[128];
    pz_buf_init(&j);
    mandi_leader_to_json(&a, false, &j);
    CHECK(strstr(j.data, "\"term\":18446744073709551614}") != NULL);
    CHECK(strstr(j.data, "updated_at") == NULL);
    CHECK_EQ_INT(mandi_parse_leader(j.data, j.len, &b, why, sizeof why), 0);
    CHECK_EQ_STR(b.id, a.id);
    CHECK_EQ_STR(b.addr, a.addr);
    CHECK(b.term == a.term);
    CHECK_EQ_STR(b.updated_at, "");
    pz_buf_reset(&j);
    mandi_leader_to_json(&a, true, &j);
    CHECK(strncmp(j.data, "{\"id\":", 6) == 0);
    CHECK_EQ_INT(mandi_parse_leader(j.data, j.len, &b, why, sizeof why), 0);
    CHECK_EQ_STR(b.updated_at, a.updated_at);

    struct mandi_join x = {0}, y;
    snprintf(x.id, sizeof x.id, "node2");
    snprintf(x.addr, sizeof x.addr, "127.0.0.1:12001");
    snprintf(x.grpc_addr, sizeof x.grpc_addr, "127.0.0.1:9092");
    snprintf(x.started_at, sizeof x.started_at, "2026-01-03T10:00:00Z");
    pz_buf_reset(&j);
    mandi_join_to_json(&x, true, &j);
    CHECK_EQ_STR(j.data, "{\"id\":\"node2\",\"addr\":\"127.0.0.1:12001\","
                         "\"http_addr\":\"\",\"grpc_addr\":\"127.0.0.1:9092\","
                         "\"started_at\":\"2026-01-03T10:00:00Z\"}");
    CHECK_EQ_INT(mandi_parse_join(j.data, j.len, &y, why, sizeof why), 0);
    CHECK_EQ_STR(y.id, x.id);
    CHECK_EQ_STR(y.addr, x.addr);
    CHECK_EQ_STR(y.http_addr, "");
    CHECK_EQ_STR(y.grpc_addr, x.grpc_addr);
    CHECK_EQ_STR(y.started_at, x.started_at);
    CHECK_EQ_INT(mandi_parse_join("{\"addr\":\"a\"}", 12, &y, why, sizeof why),
                 PZ_EINVAL);
    CHECK_EQ_STR(why, "missing id");
    CHECK(y.incarnation == 0);
    /* The incarnation: an exact integer, written only when set. */
    x.incarnation = UINT64_MAX;
    pz_buf_reset(&j);
    mandi_join_to_json(&x, false, &j);
    CHECK(strstr(j.data, ",\"incarnation\":18446744073709551615}") != NULL);
    CHECK_EQ_INT(mandi_parse_join(j.data, j.len, &y, why, sizeof why), 0);
    CHECK(y.incarnation == UINT64_MAX);
    static const char *const bad_inc[] = {
        "{\"id\":\"a\",\"addr\":\"h:1\",\"incarnation\":\"7\"}",
        "{\"id\":\"a\",\"addr\":\"h:1\",\"incarnation\":-1}",
        "{\"id\":\"a\",\"addr\":\"h:1\",\"incarnation\":1.5}",
        "{\"id\":\"a\",\"addr\":\"h:1\",\"incarnation\":18446744073709551616}",
    };
    for (size_t i = 0; i < PZ_ARRAY_SIZE(bad_inc); i++) {
        const char *d = bad_inc[i];
        CHECK_EQ_INT(mandi_parse_join(d, strlen(d), &y, why, sizeof why),
                     PZ_EINVAL);
        CHECK_EQ_STR(why, "'incarnation' must be an unsigned integer");
    }
    pz_buf_free(&j);
}

/* --- the escaping of untrusted text for logs (pz.h) --------------------- */

static const char *esc(char *buf, size_t len, const char *s)
{
    return pz_escape(buf, len, s, strlen(s));
}

TEST(escape)
{
    char b[PZ_ESCAPED_MAX];
    CHECK_EQ_STR(esc(b, sizeof b, "node1 127.0.0.1:80"), "node1 127.0.0.1:80");
    CHECK_EQ_STR(pz_escape(b, sizeof b, NULL, 0), "");
    /* A newline cannot start a forged line; escapes stay readable. */
    CHECK_EQ_STR(esc(b, sizeof b, "x\nFAKE LOG LINE"), "x\\nFAKE LOG LINE");
    CHECK_EQ_STR(esc(b, sizeof b, "a\r\tb\\c\"d"), "a\\r\\tb\\\\c\\\"d");
    /* Other controls, DEL, NUL, terminal escapes and non-ASCII bytes. */
    CHECK_EQ_STR(pz_escape(b, sizeof b, "\x1b[31m\x7f\0\xc3\xa9\xff", 10),
                 "\\x1b[31m\\x7f\\x00\\xc3\\xa9\\xff");
    /* Nothing outside printable ASCII ever comes out. */
    char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (char)i;
    char big[1200];
    pz_escape(big, sizeof big, all, sizeof all);
    /* 29 controls as \xHH, 3 as \n \r \t, 93 bytes as they are, two
     * escaped with a backslash, 129 bytes from DEL up as \xHH. */
    CHECK_EQ_INT(strlen(big), 29 * 4 + 3 * 2 + 93 + 2 * 2 + 129 * 4);
    for (const char *p = big; *p; p++)
        CHECK(*p >= 0x20 && *p < 0x7f);
    /* Bounded: cut at a whole escape, marked with "...". */
    char s4[4], s8[8];
    CHECK_EQ_STR(esc(s4, sizeof s4, "abc"), "abc");
    CHECK_EQ_STR(esc(s4, sizeof s4, "abcd"), "...");
    CHECK_EQ_STR(esc(s8, sizeof s8, "abcdefg"), "abcdefg");
    CHECK_EQ_STR(esc(s8, sizeof s8, "abcdefgh"), "abcd...");
    CHECK_EQ_STR(esc(s8, sizeof s8, "ab\ncdef"), "ab\\n...");
    CHECK_EQ_STR(esc(s8, sizeof s8, "abc\x01xyz"), "abc...");
    CHECK_EQ_STR(esc(s8, sizeof s8, "\x01\x02"), "\\x01...");
    char longer[600];
    memset(longer, '\n', sizeof longer);
    CHECK_EQ_INT(strlen(pz_escape(b, sizeof b, longer, sizeof longer)),
                 sizeof b - 1); /* 62 escapes of 2 and "..." */
}

/* --- the term rule ------------------------------------------------------- */

static enum mandi_term_verdict put_term(struct mandi_terms *t, bool *live,
                                        uint64_t *live_term, uint64_t term,
                                        uint64_t now)
{
    enum mandi_term_verdict v =
        mandi_term_check(t, *live, *live_term, term, now);
    if (v == MANDI_TERM_OK || v == MANDI_TERM_DISPUTED) {
        mandi_term_accept(t, term, now);
        *live = true;
        *live_term = term;
    }
    return v;
}

TEST(term_rule_refuses_absurd_terms)
{
    struct mandi_terms t = {0};
    bool live = false;
    uint64_t lt = 0, now = 1000;
    /* The real leader, then the attacker: refused, known or expired. */
    CHECK_EQ_INT(put_term(&t, &live, &lt, 3, now), MANDI_TERM_OK);
    CHECK_EQ_INT(put_term(&t, &live, &lt, UINT64_MAX, now),
                 MANDI_TERM_IMPLAUSIBLE);
    CHECK(mandi_term_ceiling(&t, now) == 3 + MANDI_TERM_JUMP);
    CHECK_EQ_INT(put_term(&t, &live, &lt, 3 + MANDI_TERM_JUMP + 1, now),
                 MANDI_TERM_IMPLAUSIBLE);
    live = false; /* the entry expired: the term is still remembered */
    now += 60000;
    CHECK_EQ_INT(put_term(&t, &live, &lt, UINT64_MAX, now),
                 MANDI_TERM_IMPLAUSIBLE);
    CHECK_EQ_INT(put_term(&t, &live, &lt, UINT64_MAX / 2, now),
                 MANDI_TERM_IMPLAUSIBLE);
    CHECK_EQ_INT(put_term(&t, &live, &lt, 3, now), MANDI_TERM_OK);
    CHECK(lt == 3);
    /* Stale within the jump (a deposed leader): 409 as before. */
    CHECK_EQ_INT(put_term(&t, &live, &lt, 4, now), MANDI_TERM_OK);
    CHECK_EQ_INT(put_term(&t, &live, &lt, 3, now), MANDI_TERM_STALE);
    CHECK_EQ_INT(put_term(&t, &live, &lt, 0, now), MANDI_TERM_STALE);

    /* Nothing known (a fresh mandi): an absurd term gets in first, but
     * it cannot lock the real leader out: its next PUT replaces it. */
    struct mandi_terms f = {0};
    live = false;
    now = 5;
    CHECK(mandi_term_ceiling(&f, now) == UINT64_MAX);
    CHECK_EQ_INT(put_term(&f, &live, &lt, UINT64_MAX, now), MANDI_TERM_OK);
    CHECK_EQ_INT(put_term(&f, &live, &lt, 7, now + 100), MANDI_TERM_DISPUTED);
    CHECK(lt == 7);
    /* While it is refreshed the attacker alternates with the leader (as
     * with an equal term); once it stops for MANDI_TERM_MEMORY_MS, the
     * leader's term is the reference again and absurd terms are refused. */
    CHECK_EQ_INT(put_term(&f, &live, &lt, UINT64_MAX, now + 200),
                 MANDI_TERM_OK);
    CHECK_EQ_INT(put_term(&f, &live, &lt, 7, now + 300), MANDI_TERM_DISPUTED);
    for (uint64_t ms = now + 2300; ms < now + 200 + MANDI_TERM_MEMORY_MS;
         ms += 2000)
        CHECK_EQ_INT(put_term(&f, &live, &lt, 7, ms), MANDI_TERM_OK);
    now += 200 + MANDI_TERM_MEMORY_MS;
    CHECK_EQ_INT(put_term(&f, &live, &lt, 7, now), MANDI_TERM_OK);
    CHECK(f.hi == 7);
    CHECK_EQ_INT(put_term(&f, &live, &lt, UINT64_MAX, now + 1),
                 MANDI_TERM_IMPLAUSIBLE);
}

TEST(term_rule_never_refuses_a_real_cluster)
{
    struct mandi_terms t = {0};
    bool live = false;
    uint64_t lt = 0, term = 1, now = 0;
    /* An hour of elections as fast as any cluster could have them (one
     * every 10 ms, three times the fastest election timeout), a leader
     * PUT after each one and every 2 s: never refused. */
    uint64_t next_put = 0;
    for (now = 0; now < 3600 * 1000; now += 10) {
        term++;
        if (now >= next_put || term % 7 == 0) {
            CHECK_EQ_INT(put_term(&t, &live, &lt, term, now), MANDI_TERM_OK);
            next_put = now + 2000;
        }
    }
    /* The cluster cannot reach mandi for a day of elections, or the
     * entry expires: its next PUT is still fine. */
    live = false;
    term += 24ull * 3600 * 100;
    now += 24ull * 3600 * 1000;
    CHECK_EQ_INT(put_term(&t, &live, &lt, term, now), MANDI_TERM_OK);
    /* A burst of up to MANDI_TERM_JUMP elections between two PUTs. */
    term += MANDI_TERM_JUMP;
    CHECK_EQ_INT(put_term(&t, &live, &lt, term, now), MANDI_TERM_OK);
    /* A deposed leader a few terms behind: 409, and its successor stays. */
    CHECK_EQ_INT(put_term(&t, &live, &lt, term - 2, now + 1), MANDI_TERM_STALE);
    CHECK(lt == term);
    /* mandi restarts (a fresh memory): any term is taken. */
    struct mandi_terms fresh = {0};
    live = false;
    CHECK_EQ_INT(put_term(&fresh, &live, &lt, 1ull << 40, 3), MANDI_TERM_OK);
    CHECK_EQ_INT(put_term(&fresh, &live, &lt, (1ull << 40) + 1, 2003),
                 MANDI_TERM_OK);
    /* A new cluster with low terms, once the old leader expired. */
    live = false;
    CHECK_EQ_INT(put_term(&fresh, &live, &lt, 1, 30000), MANDI_TERM_OK);
    /* Near the top: no wrap-around. */
    struct mandi_terms top = {0};
    live = false;
    CHECK_EQ_INT(put_term(&top, &live, &lt, UINT64_MAX - 5, 0), MANDI_TERM_OK);
    CHECK(mandi_term_ceiling(&top, 1) == UINT64_MAX);
    CHECK_EQ_INT(put_term(&top, &live, &lt, UINT64_MAX, 1), MANDI_TERM_OK);
}

/* --- the loop ----------------------------------------------------------- */

static uv_loop_t loop;
static uv_prepare_t prep;
static uv_timer_t ticker; /* wakes UV_RUN_ONCE up, runs conn_cron */
static char log_path[64];
static struct mandi *srv;
static int srv_port;
static bool srv_closed;

static void on_prep(uv_prepare_t *h)
{
    PZ_UNUSED(h);
    conn_before_sleep();
}

static void on_tick(uv_timer_t *h)
{
    PZ_UNUSED(h);
    conn_cron();
}

static void world_init(uint64_t idle_ms)
{
    signal(SIGPIPE, SIG_IGN);
    pz_assert(uv_loop_init(&loop) == 0);
    struct conn_limits lim = {
        .high_water = 1u << 20,
        .hard_limit = 64u << 20,
        .idle_timeout = idle_ms,
    };
    conn_setup(&loop, &lim);
    uv_prepare_init(&loop, &prep);
    uv_prepare_start(&prep, on_prep);
    uv_timer_init(&loop, &ticker);
    uv_timer_start(&ticker, on_tick, 5, 5);
    snprintf(log_path, sizeof log_path, "/tmp/pz-mandi-XXXXXX");
    int fd = mkstemp(log_path);
    pz_assert(fd >= 0);
    close(fd);
    pz_log_setup(PZ_LOG_DEBUG, "t");
    pz_assert(pz_log_open(log_path) == 0);
    srv = NULL;
    srv_port = 0;
}

typedef bool (*pred_fn)(void *arg);

static bool run_until(pred_fn pred, void *arg, uint64_t ms)
{
    uv_update_time(&loop);
    uint64_t deadline = uv_now(&loop) + ms;
    while (!pred(arg)) {
        if (uv_now(&loop) >= deadline)
            return false;
        uv_run(&loop, UV_RUN_ONCE);
    }
    return true;
}

static bool never(void *arg)
{
    PZ_UNUSED(arg);
    return false;
}

static void run_for(uint64_t ms)
{
    run_until(never, NULL, ms);
}

static bool log_has(const char *needle)
{
    FILE *f = fopen(log_path, "r");
    if (f == NULL)
        return false;
    struct pz_buf b;
    pz_buf_init(&b);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        pz_buf_append(&b, chunk, n);
    fclose(f);
    bool found = b.data && strstr(b.data, needle) != NULL;
    if (!found)
        fprintf(stderr, "    log lacks \"%s\"; log:\n%s", needle,
                b.data ? b.data : "");
    pz_buf_free(&b);
    return found;
}

/* The log's text (pz_free it). */
static char *log_text(void)
{
    struct pz_buf b;
    pz_buf_init(&b);
    pz_buf_append(&b, "", 0);
    FILE *f = fopen(log_path, "r");
    if (f) {
        char chunk[4096];
        size_t n;
        while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
            pz_buf_append(&b, chunk, n);
        fclose(f);
    }
    return b.data;
}

/* How many times needle occurs in the log. */
static int log_count(const char *needle)
{
    char *t = log_text();
    int n = 0;
    for (const char *p = strstr(t, needle); p; p = strstr(p + 1, needle))
        n++;
    pz_free(t);
    return n;
}

/* Lines of the log that start with prefix (a forged line would). */
static int log_lines_starting(const char *prefix)
{
    char *t = log_text();
    int n = 0;
    for (const char *p = t; *p;) {
        n += strncmp(p, prefix, strlen(prefix)) == 0;
        const char *nl = strchr(p, '\n');
        p = nl ? nl + 1 : p + strlen(p);
    }
    pz_free(t);
    return n;
}

static void on_srv_closed(void *data)
{
    PZ_UNUSED(data);
    srv_closed = true;
}

static bool is_srv_closed(void *arg)
{
    PZ_UNUSED(arg);
    return srv_closed;
}

/* Start mandi on port (0: any) with token ("" none). */
static bool start_mandi(int port, const char *token)
{
    struct mandi_opts o = {
        .token = token,
        .leader_ttl_ms = 10000,
        .join_ttl_ms = 30000,
        .sweep_ms = 5000,
        .max_joins = 1024,
        .max_clients = 100,
        .max_body = MANDI_MAX_BODY,
        .max_header_bytes = 16384,
        .max_headers = 100,
        .out_pause = 1u << 20,
    };
    char err[256];
    snprintf(o.listen_addr, sizeof o.listen_addr, "127.0.0.1:%d", port);
    srv = mandi_new(&loop, &o, err, sizeof err);
    if (srv == NULL) {
        fprintf(stderr, "    mandi_new: %s\n", err);
        return false;
    }
    srv_port = mandi_port(srv);
    srv_closed = false;
    return srv_port > 0;
}

static bool stop_mandi(void)
{
    if (srv == NULL)
        return true;
    mandi_close(srv, on_srv_closed, NULL);
    srv = NULL;
    return run_until(is_srv_closed, NULL, 5000);
}

static struct mandi_client *new_client(int port, const char *token,
                                       uint64_t timeout_ms)
{
    char url[64], err[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    struct mandi_client *mc =
        mandi_client_new(&loop, url, token, timeout_ms, err, sizeof err);
    if (mc == NULL)
        fprintf(stderr, "    mandi_client_new: %s\n", err);
    return mc;
}

/* Closes everything; returns uv_loop_close's result. */
static int world_close(void)
{
    if (!stop_mandi())
        fprintf(stderr, "    mandi did not close\n");
    run_for(20);
    uv_close((uv_handle_t *)&prep, NULL);
    uv_close((uv_handle_t *)&ticker, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    int rv = uv_loop_close(&loop);
    pz_log_close();
    unlink(log_path);
    if (conn_count() != 0)
        fprintf(stderr, "    %zu connections left\n", conn_count());
    return rv == 0 && conn_count() == 0 ? 0 : -1;
}

/* --- results --------------------------------------------------------- */

static int completions; /* callbacks run so far, for ordering */

struct got {
    int calls;                  /* times the callback ran */
    int order;                  /* value of completions when it ran */
    int err;                    /* res->err */
    int status;                 /* res->http_status */
    char message[128];          /* res->message */
    bool has_leader;            /* res->leader != NULL */
    struct mandi_leader leader; /* *res->leader */
    size_t n_joins;             /* res->n_joins */
    struct mandi_join joins[4]; /* the first ones */
    uint64_t elapsed;           /* ms from start to the callback */
    uint64_t start;             /* uv_now() when the request was made */
};

static void record(const struct mandi_result *r, void *data)
{
    struct got *g = data;
    g->calls++;
    g->order = ++completions;
    g->err = r->err;
    g->status = r->http_status;
    pz_assert(r->message != NULL);
    snprintf(g->message, sizeof g->message, "%s", r->message);
    g->has_leader = r->leader != NULL;
    if (r->leader)
        g->leader = *r->leader;
    g->n_joins = r->n_joins;
    for (size_t i = 0; i < r->n_joins && i < PZ_ARRAY_SIZE(g->joins); i++)
        g->joins[i] = r->joins[i];
    uv_update_time(&loop);
    g->elapsed = uv_now(&loop) - g->start;
}

static struct got *fresh(struct got *g)
{
    memset(g, 0, sizeof *g);
    uv_update_time(&loop);
    g->start = uv_now(&loop);
    return g;
}

static bool called(void *arg)
{
    return ((struct got *)arg)->calls > 0;
}

static bool wait_got(struct got *g)
{
    return run_until(called, g, 5000);
}

static struct mandi_leader leader_info(const char *id, uint64_t term)
{
    struct mandi_leader l = {.term = term};
    snprintf(l.id, sizeof l.id, "%s", id);
    snprintf(l.addr, sizeof l.addr, "127.0.0.1:12000");
    snprintf(l.http_addr, sizeof l.http_addr, "127.0.0.1:8080");
    snprintf(l.grpc_addr, sizeof l.grpc_addr, "127.0.0.1:9090");
    return l;
}

static struct mandi_join join_info(const char *id, int port)
{
    struct mandi_join j = {0};
    snprintf(j.id, sizeof j.id, "%s", id);
    snprintf(j.addr, sizeof j.addr, "127.0.0.1:%d", port);
    snprintf(j.http_addr, sizeof j.http_addr, "127.0.0.1:%d", port + 1);
    snprintf(j.grpc_addr, sizeof j.grpc_addr, "127.0.0.1:%d", port + 2);
    return j;
}

/* --- client against mandi --------------------------------------------- */

TEST(client_every_request)
{
    world_init(0);
    CHECK(start_mandi(0, ""));
    struct mandi_client *mc = new_client(srv_port, NULL, 2000);
    CHECK(mc != NULL);
    struct got g;
    CHECK(mandi_get_leader(mc, record, fresh(&g)) > 0);
    CHECK_EQ_INT(g.calls, 0); /* never from inside the call */
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.err, 0);
    CHECK_EQ_INT(g.status, 404);
    CHECK_EQ_STR(g.message, "leader not available");
    CHECK(!g.has_leader);

    struct mandi_leader l = leader_info("node1", UINT64_MAX);
    CHECK(mandi_put_leader(mc, &l, record, fresh(&g)) > 0);
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.status, 204);
    CHECK_EQ_STR(g.message, "");
    mandi_get_leader(mc, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.status, 200);
    CHECK(g.has_leader);
    CHECK_EQ_STR(g.leader.id, "node1");
    CHECK_EQ_STR(g.leader.addr, l.addr);
    CHECK_EQ_STR(g.leader.http_addr, l.http_addr);
    CHECK_EQ_STR(g.leader.grpc_addr, l.grpc_addr);
    CHECK(g.leader.term == UINT64_MAX);
    CHECK(strlen(g.leader.updated_at) >= 20);

    struct mandi_join j2 = join_info("node2", 12001);
    struct mandi_join j3 = join_info("node 3/x", 12004);
    mandi_get_joins(mc, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.status, 200);
    CHECK_EQ_INT(g.n_joins, 0);
    mandi_post_join(mc, &j2, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.status, 204);
    mandi_post_join(mc, &j3, record, fresh(&g));
    CHECK(wait_got(&g));
    mandi_get_joins(mc, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.status, 200);
    CHECK_EQ_INT(g.n_joins, 2);
    CHECK_EQ_STR(g.joins[0].id, "node2");
    CHECK_EQ_STR(g.joins[0].addr, j2.addr);
    CHECK_EQ_STR(g.joins[0].http_addr, j2.http_addr);
    CHECK_EQ_STR(g.joins[0].grpc_addr, j2.grpc_addr);
    CHECK(strlen(g.joins[0].started_at) >= 20);
    CHECK_EQ_STR(g.joins[1].id, "node 3/x");
    /* The id is percent-encoded in the query. */
    mandi_delete_join(mc, "node 3/x", record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.status, 204);
    mandi_delete_join(mc, "absent", record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.status, 204);
    mandi_get_joins(mc, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.n_joins, 1);
    CHECK_EQ_STR(g.joins[0].id, "node2");
    CHECK_EQ_INT(mandi_client_pending(mc), 0);
    mandi_client_free(mc);
    CHECK_EQ_INT(world_close(), 0);
}

TEST(client_pipelines_in_order)
{
    world_init(0);
    CHECK(start_mandi(0, ""));
    struct mandi_client *mc = new_client(srv_port, NULL, 2000);
    CHECK(mc != NULL);
    enum { N = 60 };
    static struct got g[N];
    completions = 0;
    /* Alternate PUTs with increasing terms and GETs: each GET must see
     * the PUT made just before it. */
    for (int i = 0; i < N; i++) {
        if (i % 2 == 0) {
            struct mandi_leader l = leader_info("node1", (uint64_t)i + 1);
            CHECK(mandi_put_leader(mc, &l, record, fresh(&g[i])) > 0);
        } else {
            CHECK(mandi_get_leader(mc, record, fresh(&g[i])) > 0);
        }
    }
    CHECK_EQ_INT(mandi_client_pending(mc), N);
    CHECK(wait_got(&g[N - 1]));
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(g[i].calls, 1);
        CHECK_EQ_INT(g[i].order, i + 1);
        CHECK_EQ_INT(g[i].err, 0);
        CHECK_EQ_INT(g[i].status, i % 2 ? 200 : 204);
        if (i % 2)
            CHECK(g[i].leader.term == (uint64_t)i);
    }
    CHECK_EQ_INT(mandi_client_pending(mc), 0);
    mandi_client_free(mc);
    CHECK_EQ_INT(world_close(), 0);
}

TEST(client_sees_409_and_401)
{
    world_init(0);
    CHECK(start_mandi(0, "tok-en.1"));
    struct mandi_client *good = new_client(srv_port, "tok-en.1", 2000);
    struct mandi_client *none = new_client(srv_port, NULL, 2000);
    struct mandi_client *wrong = new_client(srv_port, "tok-en.2", 2000);
    CHECK(good && none && wrong);
    struct got g;
    struct mandi_leader l = leader_info("node1", 7);
    mandi_put_leader(none, &l, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.err, 0);
    CHECK_EQ_INT(g.status, 401);
    CHECK_EQ_STR(g.message, "unauthorized");
    struct mandi_join j = join_info("node2", 12001);
    mandi_post_join(wrong, &j, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.status, 401);
    mandi_delete_join(wrong, "node2", record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.status, 401);
    mandi_put_leader(good, &l, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.status, 204);
    /* Reads are open. */
    mandi_get_leader(none, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.status, 200);
    CHECK(g.leader.term == 7);
    /* A deposed leader cannot overwrite its successor. */
    struct mandi_leader old = leader_info("node0", 6);
    mandi_put_leader(good, &old, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.err, 0);
    CHECK_EQ_INT(g.status, 409);
    CHECK_EQ_STR(g.message, "stale term");
    mandi_get_leader(wrong, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_STR(g.leader.id, "node1");
    mandi_client_free(good);
    mandi_client_free(none);
    mandi_client_free(wrong);
    CHECK_EQ_INT(world_close(), 0);
}

/* A port nothing listens on: bound by a socket that never listens. */
static uv_tcp_t holder;

static int dead_port(void)
{
    struct sockaddr_in sa;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    uv_tcp_init(&loop, &holder);
    uv_ip4_addr("127.0.0.1", 0, &sa);
    if (uv_tcp_bind(&holder, (struct sockaddr *)&sa, 0) != 0 ||
        uv_tcp_getsockname(&holder, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static bool all_called(void *arg)
{
    struct got *g = arg;
    for (int i = 0; i < 3; i++)
        if (g[i].calls == 0)
            return false;
    return true;
}

TEST(client_connection_refused)
{
    world_init(0);
    int port = dead_port();
    CHECK(port > 0);
    struct mandi_client *mc = new_client(port, NULL, 2000);
    CHECK(mc != NULL);
    struct got g[3];
    struct mandi_leader l = leader_info("node1", 1);
    mandi_get_leader(mc, record, fresh(&g[0]));
    mandi_put_leader(mc, &l, record, fresh(&g[1]));
    mandi_get_joins(mc, record, fresh(&g[2]));
    CHECK(run_until(all_called, g, 3000));
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(g[i].calls, 1);
        CHECK_EQ_INT(g[i].err, UV_ECONNREFUSED);
        CHECK_EQ_INT(g[i].status, 0);
        CHECK(g[i].elapsed < 1000);
    }
    /* The next request dials again (and is refused again). */
    mandi_get_leader(mc, record, fresh(&g[0]));
    CHECK(wait_got(&g[0]));
    CHECK_EQ_INT(g[0].err, UV_ECONNREFUSED);
    CHECK_EQ_INT(mandi_client_pending(mc), 0);
    mandi_client_free(mc);
    uv_close((uv_handle_t *)&holder, NULL);
    CHECK_EQ_INT(world_close(), 0);
}

/* --- a raw server for what mandi never does ------------------------------ */

enum raw_mode {
    RAW_SILENT, /* read and never answer */
    RAW_HANGUP, /* close as soon as a request arrives */
    RAW_REPLY,  /* answer every read with raw.reply */
};

#define RAW_MAX 32

static struct {
    uv_tcp_t ls;          /* listener */
    int port;             /* its port */
    enum raw_mode mode;   /* behaviour */
    const char *reply;    /* RAW_REPLY: bytes to send */
    size_t reply_len;     /* their number */
    uv_tcp_t cl[RAW_MAX]; /* accepted connections */
    int n;                /* accepted so far */
    int reads;            /* reads with data */
} raw;

static char raw_buf[65536];

static void raw_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    PZ_UNUSED(h);
    PZ_UNUSED(hint);
    b->base = raw_buf;
    b->len = sizeof raw_buf;
}

static void raw_written(uv_write_t *w, int status)
{
    PZ_UNUSED(status);
    pz_free(w);
}

static void raw_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    PZ_UNUSED(b);
    if (n <= 0) {
        if (n < 0 && !uv_is_closing((uv_handle_t *)s))
            uv_close((uv_handle_t *)s, NULL);
        return;
    }
    raw.reads++;
    if (raw.mode == RAW_HANGUP) {
        uv_close((uv_handle_t *)s, NULL);
    } else if (raw.mode == RAW_REPLY) {
        /* All of it, however large (the reply outlives the write). */
        uv_buf_t out = uv_buf_init((char *)raw.reply, (unsigned)raw.reply_len);
        uv_write_t *w = pz_malloc(sizeof *w);
        if (uv_write(w, s, &out, 1, raw_written) != 0)
            pz_free(w);
    }
}

static void raw_conn(uv_stream_t *ls, int status)
{
    if (status < 0 || raw.n >= RAW_MAX)
        return;
    uv_tcp_t *c = &raw.cl[raw.n++];
    uv_tcp_init(&loop, c);
    if (uv_accept(ls, (uv_stream_t *)c) == 0)
        uv_read_start((uv_stream_t *)c, raw_alloc, raw_read);
}

static bool raw_start_n(enum raw_mode mode, const char *reply, size_t n)
{
    struct sockaddr_in sa;
    struct sockaddr_storage ss;
    int len = sizeof ss;
    memset(&raw, 0, sizeof raw);
    raw.mode = mode;
    raw.reply = reply;
    raw.reply_len = n;
    uv_tcp_init(&loop, &raw.ls);
    uv_ip4_addr("127.0.0.1", 0, &sa);
    if (uv_tcp_bind(&raw.ls, (struct sockaddr *)&sa, 0) != 0 ||
        uv_listen((uv_stream_t *)&raw.ls, 16, raw_conn) != 0 ||
        uv_tcp_getsockname(&raw.ls, (struct sockaddr *)&ss, &len) != 0)
        return false;
    raw.port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return true;
}

static bool raw_start(enum raw_mode mode, const char *reply)
{
    return raw_start_n(mode, reply, reply ? strlen(reply) : 0);
}

static void raw_stop(void)
{
    uv_close((uv_handle_t *)&raw.ls, NULL);
    for (int i = 0; i < raw.n; i++)
        if (!uv_is_closing((uv_handle_t *)&raw.cl[i]))
            uv_close((uv_handle_t *)&raw.cl[i], NULL);
}

TEST(client_timeout)
{
    world_init(0);
    CHECK(raw_start(RAW_SILENT, NULL));
    struct mandi_client *mc = new_client(raw.port, NULL, 300);
    CHECK(mc != NULL);
    struct got g[3];
    completions = 0;
    mandi_get_leader(mc, record, fresh(&g[0]));
    run_for(100);
    mandi_get_joins(mc, record, fresh(&g[1]));
    CHECK(wait_got(&g[0]));
    CHECK_EQ_INT(g[0].err, PZ_ETIMEDOUT);
    CHECK_EQ_INT(g[0].status, 0);
    CHECK(g[0].elapsed >= 290 && g[0].elapsed < 1500);
    /* Each request keeps its own deadline, also when the stuck
     * connection is dropped and it moves to a new one. */
    CHECK(wait_got(&g[1]));
    CHECK_EQ_INT(g[1].err, PZ_ETIMEDOUT);
    CHECK(g[1].elapsed >= 290 && g[1].elapsed < 1500);
    CHECK_EQ_INT(g[1].order, 2);
    CHECK(raw.n >= 2);
    CHECK(log_has("no answer in 300 ms"));
    mandi_client_free(mc);
    raw_stop();
    CHECK_EQ_INT(world_close(), 0);
}

TEST(client_resends_once_after_lost_connection)
{
    world_init(0);
    CHECK(raw_start(RAW_HANGUP, NULL));
    struct mandi_client *mc = new_client(raw.port, NULL, 3000);
    CHECK(mc != NULL);
    struct got g;
    mandi_get_leader(mc, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.err, PZ_EIO);
    CHECK_EQ_INT(raw.n, 2); /* sent on two connections, then failed */
    CHECK_EQ_INT(raw.reads, 2);
    CHECK(g.elapsed < 2000);
    mandi_client_free(mc);
    raw_stop();
    CHECK_EQ_INT(world_close(), 0);
}

TEST(client_malformed_responses)
{
    world_init(0);
    CHECK(raw_start(RAW_REPLY, "HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"
                               "{\"id\":1}\n"));
    struct mandi_client *mc = new_client(raw.port, NULL, 2000);
    CHECK(mc != NULL);
    struct got g;
    /* Good HTTP, bad LeaderInfo / join list: PZ_EPROTO. */
    mandi_get_leader(mc, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.err, PZ_EPROTO);
    CHECK_EQ_INT(g.status, 0);
    mandi_get_joins(mc, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.err, PZ_EPROTO);
    /* Any status of a PUT is passed on as it is. */
    struct mandi_leader l = leader_info("n", 1);
    mandi_put_leader(mc, &l, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.err, 0);
    CHECK_EQ_INT(g.status, 200);
    mandi_client_free(mc);
    raw_stop();
    run_for(50); /* raw's handles are closed before it is reused */

    /* Not HTTP at all. */
    CHECK(raw_start(RAW_REPLY, "SSH-2.0-OpenSSH\r\n"));
    mc = new_client(raw.port, NULL, 2000);
    mandi_get_leader(mc, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.err, PZ_EPROTO);
    CHECK(log_has("bad response"));
    mandi_client_free(mc);
    raw_stop();
    CHECK_EQ_INT(world_close(), 0);
}

/* One GET against a raw server answering reply (its length n), with a
 * fresh client; g gets the result. */
static bool hostile_get(const char *reply, size_t n, bool joins, struct got *g)
{
    if (!raw_start_n(RAW_REPLY, reply, n))
        return false;
    struct mandi_client *mc = new_client(raw.port, NULL, 3000);
    if (mc == NULL)
        return false;
    if (joins)
        mandi_get_joins(mc, record, fresh(g));
    else
        mandi_get_leader(mc, record, fresh(g));
    bool ok = wait_got(g);
    mandi_client_free(mc);
    raw_stop();
    run_for(50); /* raw's handles are closed before it is reused */
    return ok;
}

static bool hostile_get_s(const char *reply, bool joins, struct got *g)
{
    return hostile_get(reply, strlen(reply), joins, g);
}

TEST(client_bounds_what_it_reads)
{
    world_init(0);
    struct got g;
    struct pz_buf b;
    pz_buf_init(&b);
    /* Headers that do not end: cut at 16 KiB, at once. */
    pz_buf_appendf(&b, "HTTP/1.1 200 OK\r\nX-Pad: ");
    for (int i = 0; i < 40000; i++)
        pz_buf_append(&b, "a", 1);
    CHECK(hostile_get(b.data, b.len, false, &g));
    CHECK_EQ_INT(g.err, PZ_EPROTO);
    CHECK(g.elapsed < 2000);
    CHECK(log_has("response headers over 16 KiB"));
    /* An announced body over 4 MiB: refused before it is read. */
    CHECK(hostile_get_s("HTTP/1.1 200 OK\r\nContent-Length: 1000000000000"
                        "\r\n\r\n{",
                        false, &g));
    CHECK_EQ_INT(g.err, PZ_EPROTO);
    CHECK(g.elapsed < 2000);
    CHECK(log_has("Content-Length over 4 MiB"));
    /* A body over 4 MiB without a length: cut there. */
    pz_buf_reset(&b);
    pz_buf_appendf(&b, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n[");
    for (int i = 0; i < 5 * 1024 * 1024 / 8; i++)
        pz_buf_append(&b, "0,0,0,0,", 8);
    CHECK(hostile_get(b.data, b.len, true, &g));
    CHECK_EQ_INT(g.err, PZ_EPROTO);
    CHECK(log_has("body over 4 MiB"));
    /* Interim answers are skipped; an upgrade or a status out of range
     * is not mandi's. */
    CHECK(hostile_get_s("HTTP/1.1 100 Continue\r\n\r\n"
                        "HTTP/1.1 102 Processing\r\nX: y\r\n\r\n"
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 21\r\n\r\n"
                        "leader not available\n",
                        false, &g));
    CHECK_EQ_INT(g.err, 0);
    CHECK_EQ_INT(g.status, 404);
    CHECK_EQ_STR(g.message, "leader not available");
    CHECK(hostile_get_s("HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n"
                        "Connection: upgrade\r\n\r\n",
                        false, &g));
    CHECK_EQ_INT(g.err, PZ_EPROTO);
    CHECK(hostile_get_s("HTTP/1.1 999 What\r\nContent-Length: 0\r\n\r\n", false,
                        &g));
    CHECK_EQ_INT(g.err, PZ_EPROTO);
    /* A huge list of tiny values is scanned, not built into a tree: the
     * answer (3 MiB here) costs no more than its bytes. */
    pz_buf_reset(&b);
    size_t items = 1500 * 1000;
    pz_buf_appendf(&b, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n[",
                   2 * items + 1);
    for (size_t i = 0; i < items; i++)
        pz_buf_append(&b, i + 1 < items ? "0," : "0]", 2);
    CHECK(hostile_get(b.data, b.len, true, &g));
    CHECK_EQ_INT(g.err, 0);
    CHECK_EQ_INT(g.status, 200);
    CHECK_EQ_INT(g.n_joins, 0);
    CHECK(log_has("ignored 1500000 join requests that are not valid"));
    pz_buf_free(&b);
    CHECK_EQ_INT(world_close(), 0);
}

/* A 200 answer with body. */
static void answer_200(struct pz_buf *b, const char *body)
{
    pz_buf_reset(b);
    pz_buf_appendf(b, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n%s",
                   strlen(body), body);
}

TEST(client_validates_what_it_reads)
{
    world_init(0);
    struct got g;
    struct pz_buf b;
    pz_buf_init(&b);
    /* A LeaderInfo with a forged id: refused, and the log has no forged
     * line. */
    answer_200(&b,
               "{\"id\":\"x\\nFAKE LOG LINE\",\"addr\":\"h:1\",\"term\":3}");
    CHECK(hostile_get(b.data, b.len, false, &g));
    CHECK_EQ_INT(g.err, PZ_EPROTO);
    CHECK(!g.has_leader);
    CHECK(log_has("its leader is not valid: 'id' holds a control character"));
    answer_200(&b, "{\"id\":\"n\",\"grpc_addr\":\"evil.example:1/x\"}");
    CHECK(hostile_get(b.data, b.len, false, &g));
    CHECK_EQ_INT(g.err, PZ_EPROTO);
    /* Join requests: only the valid ones. */
    answer_200(&b, "[{\"id\":\"node2\",\"addr\":\"127.0.0.1:12001\"},"
                   "{\"id\":\"x\\nFAKE LOG LINE\",\"addr\":\"h:1\"},"
                   "{\"id\":\"n3\",\"addr\":\"h:1\\u001b[2J\"},"
                   "{\"id\":\"n4\"},7,\"s\",[],null,"
                   "{\"id\":\"node5\",\"addr\":\"[::1]:5\",\"x\":[{}]}]");
    CHECK(hostile_get(b.data, b.len, true, &g));
    CHECK_EQ_INT(g.err, 0);
    CHECK_EQ_INT(g.n_joins, 2);
    CHECK_EQ_STR(g.joins[0].id, "node2");
    CHECK_EQ_STR(g.joins[1].id, "node5");
    CHECK_EQ_STR(g.joins[1].addr, "[::1]:5");
    CHECK(log_has("ignored 7 join requests that are not valid"));
    /* Not an array, or broken: PZ_EPROTO. */
    static const char *const notlists[] = {"{}",    "[",    "[{}", "[1,]",
                                           "[1 2]", "[] x", "",    "[{]"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(notlists); i++) {
        answer_200(&b, notlists[i]);
        CHECK(hostile_get(b.data, b.len, true, &g));
        CHECK_EQ_INT(g.err, PZ_EPROTO);
    }
    /* More than 1024: the first 1024. */
    struct pz_buf list;
    pz_buf_init(&list);
    pz_buf_append(&list, "[", 1);
    for (int i = 0; i < 1500; i++)
        pz_buf_appendf(&list, "%s{\"id\":\"n%d\",\"addr\":\"h:%d\"}",
                       i ? "," : "", i, i + 1);
    pz_buf_append(&list, "]", 1);
    answer_200(&b, list.data);
    pz_buf_free(&list);
    CHECK(hostile_get(b.data, b.len, true, &g));
    CHECK_EQ_INT(g.err, 0);
    CHECK_EQ_INT(g.n_joins, 1024);
    CHECK_EQ_STR(g.joins[3].id, "n3");
    CHECK(log_has("ignored 476 join requests past the first 1024"));
    /* An error message reaches the caller escaped, first line only. */
    CHECK(hostile_get_s("HTTP/1.1 409 Conflict\r\nContent-Length: 27\r\n\r\n"
                        "\x1b[31mstale\tterm\x7f\nFAKE LINE\n",
                        false, &g));
    CHECK_EQ_INT(g.err, 0);
    CHECK_EQ_INT(g.status, 409);
    CHECK_EQ_STR(g.message, "\\x1b[31mstale\\tterm\\x7f");
    CHECK_EQ_INT(log_lines_starting("FAKE"), 0);
    pz_buf_free(&b);
    CHECK_EQ_INT(world_close(), 0);
}

TEST(client_warnings_are_rate_limited)
{
    world_init(0);
    CHECK(raw_start(RAW_REPLY, "SSH-2.0-OpenSSH\r\n"));
    struct mandi_client *mc = new_client(raw.port, NULL, 2000);
    CHECK(mc != NULL);
    struct got g;
    for (int i = 0; i < 12; i++) {
        mandi_get_leader(mc, record, fresh(&g));
        CHECK(wait_got(&g));
        CHECK_EQ_INT(g.err, PZ_EPROTO);
    }
    CHECK_EQ_INT(log_count("bad response"), 5);
    mandi_client_free(mc);
    raw_stop();
    CHECK_EQ_INT(world_close(), 0);
}

/* --- cancel and free -------------------------------------------------- */

static struct mandi_client *cancel_mc;
static uint64_t cancel_id;

static void record_and_cancel(const struct mandi_result *r, void *data)
{
    record(r, data);
    CHECK(mandi_cancel(cancel_mc, cancel_id));
}

TEST(client_cancel)
{
    world_init(0);
    CHECK(start_mandi(0, ""));
    struct mandi_client *mc = new_client(srv_port, NULL, 2000);
    CHECK(mc != NULL);
    struct got a, b, c, d, e;
    struct mandi_leader l = leader_info("node1", 4);
    completions = 0;
    uint64_t ia = mandi_put_leader(mc, &l, record, fresh(&a));
    uint64_t ib = mandi_get_leader(mc, record, fresh(&b));
    uint64_t ic = mandi_get_leader(mc, record, fresh(&c));
    CHECK(ia > 0 && ib > ia && ic > ib);
    CHECK(mandi_cancel(mc, ib));
    CHECK(!mandi_cancel(mc, ib));  /* once */
    CHECK(!mandi_cancel(mc, 999)); /* never existed */
    CHECK_EQ_INT(mandi_client_pending(mc), 2);
    CHECK(wait_got(&c));
    CHECK_EQ_INT(a.calls, 1);
    CHECK_EQ_INT(b.calls, 0);
    CHECK_EQ_INT(c.calls, 1);
    CHECK_EQ_INT(c.order, 2);
    /* The cancelled request's answer was read and dropped: later answers
     * still match their requests. */
    CHECK_EQ_INT(c.status, 200);
    CHECK(c.leader.term == 4);
    CHECK(!mandi_cancel(mc, ia)); /* completed */
    /* A callback may cancel a later request. */
    cancel_mc = mc;
    mandi_get_leader(mc, record_and_cancel, fresh(&d));
    cancel_id = mandi_get_joins(mc, record, fresh(&e));
    mandi_get_leader(mc, record, fresh(&c));
    CHECK(wait_got(&c));
    CHECK_EQ_INT(d.calls, 1);
    CHECK_EQ_INT(e.calls, 0);
    CHECK_EQ_INT(c.status, 200);
    run_for(50);
    CHECK_EQ_INT(b.calls, 0);
    CHECK_EQ_INT(e.calls, 0);
    CHECK_EQ_INT(mandi_client_pending(mc), 0);
    mandi_client_free(mc);
    CHECK_EQ_INT(world_close(), 0);
}

static struct mandi_client *free_mc;
static uint64_t reentrant_id = 77;

static void record_and_request(const struct mandi_result *r, void *data)
{
    record(r, data);
    reentrant_id = mandi_get_leader(free_mc, record, data);
}

static void record_and_free(const struct mandi_result *r, void *data)
{
    record(r, data);
    mandi_client_free(free_mc);
}

TEST(client_free_with_requests_pending)
{
    world_init(0);
    CHECK(start_mandi(0, ""));
    struct mandi_client *mc = new_client(srv_port, NULL, 2000);
    CHECK(mc != NULL);
    struct got g[3];
    free_mc = mc;
    mandi_get_leader(mc, record, fresh(&g[0]));
    mandi_get_joins(mc, record_and_request, fresh(&g[1]));
    mandi_get_leader(mc, record, fresh(&g[2]));
    uint64_t cancelled = mandi_get_leader(mc, record, fresh(&g[2]));
    mandi_cancel(mc, cancelled);
    mandi_client_free(mc);
    /* Inside the call, each with PZ_ECANCELED; new requests refused. */
    for (int i = 0; i < 2; i++) {
        CHECK_EQ_INT(g[i].calls, 1);
        CHECK_EQ_INT(g[i].err, PZ_ECANCELED);
    }
    CHECK_EQ_INT(g[2].calls, 1); /* the one not cancelled */
    CHECK(reentrant_id == 0);
    mandi_client_free(NULL);
    run_for(50);
    CHECK_EQ_INT(g[0].calls, 1);

    /* Freed from a callback: the others complete as cancelled. */
    mc = new_client(srv_port, NULL, 2000);
    free_mc = mc;
    mandi_get_leader(mc, record_and_free, fresh(&g[0]));
    mandi_get_leader(mc, record, fresh(&g[1]));
    mandi_get_leader(mc, record, fresh(&g[2]));
    CHECK(wait_got(&g[0]));
    CHECK_EQ_INT(g[0].err, 0);
    CHECK_EQ_INT(g[0].status, 404);
    CHECK_EQ_INT(g[1].calls, 1);
    CHECK_EQ_INT(g[1].err, PZ_ECANCELED);
    CHECK_EQ_INT(g[2].err, PZ_ECANCELED);
    run_for(50);
    CHECK_EQ_INT(g[1].calls, 1);
    CHECK_EQ_INT(g[2].calls, 1);
    CHECK_EQ_INT(world_close(), 0);
}

/* --- reconnecting -------------------------------------------------------- */

TEST(client_reconnects)
{
    /* mandi closes connections idle for 150 ms. */
    world_init(150);
    CHECK(start_mandi(0, ""));
    int port = srv_port;
    struct mandi_client *mc = new_client(port, NULL, 2000);
    CHECK(mc != NULL);
    struct got g;
    struct mandi_leader l = leader_info("node1", 3);
    mandi_put_leader(mc, &l, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.status, 204);
    run_for(400); /* mandi closes the idle connection */
    CHECK(log_has("connection closed"));
    mandi_get_leader(mc, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.err, 0);
    CHECK_EQ_INT(g.status, 200);

    /* mandi restarts on the same port: state is gone, the client
     * carries on. */
    CHECK(stop_mandi());
    CHECK(start_mandi(port, ""));
    mandi_get_leader(mc, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.err, 0);
    CHECK_EQ_INT(g.status, 404);

    /* mandi gone: refused. */
    CHECK(stop_mandi());
    mandi_get_leader(mc, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.err, UV_ECONNREFUSED);
    mandi_client_free(mc);
    CHECK_EQ_INT(world_close(), 0);
}

TEST(client_bad_arguments)
{
    world_init(0);
    char err[256];
    static const char *const urls[] = {"127.0.0.1:7000",
                                       "http://",
                                       "",
                                       "http://example.org:7000",
                                       "https://127.0.0.1:7000",
                                       "http://127.0.0.1:7000/x",
                                       "http://127.0.0.1:0"};
    for (size_t i = 0; i < PZ_ARRAY_SIZE(urls); i++) {
        err[0] = '\0';
        CHECK(mandi_client_new(&loop, urls[i], NULL, 1000, err, sizeof err) ==
              NULL);
        CHECK(err[0] != '\0');
    }
    CHECK(mandi_client_new(&loop, "http://127.0.0.1:7000", "a b", 1000, err,
                           sizeof err) == NULL);
    CHECK(strstr(err, "token") != NULL);
    CHECK(mandi_client_new(&loop, "http://127.0.0.1:7000", "x\r\ny", 1000, err,
                           sizeof err) == NULL);
    CHECK(mandi_client_new(&loop, "http://127.0.0.1:7000", NULL, 0, err,
                           sizeof err) == NULL);
    struct mandi_client *mc[3] = {
        mandi_client_new(&loop, "http://127.0.0.1:7000/", "", 1000, err,
                         sizeof err),
        mandi_client_new(&loop, "http://localhost:7000", NULL, 1000, err,
                         sizeof err),
        mandi_client_new(&loop, "http://[::1]:7000", "t", 1000, err,
                         sizeof err),
    };
    for (int i = 0; i < 3; i++) {
        CHECK(mc[i] != NULL);
        mandi_client_free(mc[i]);
    }
    CHECK_EQ_INT(world_close(), 0);
}

TEST(server_close_with_clients_connected)
{
    world_init(0);
    CHECK(start_mandi(0, ""));
    struct mandi_client *mc = new_client(srv_port, NULL, 2000);
    struct got g;
    mandi_get_leader(mc, record, fresh(&g));
    CHECK(wait_got(&g));
    CHECK_EQ_INT(g.status, 404);
    /* The client's connection is open: mandi closes it and finishes. */
    CHECK(stop_mandi());
    mandi_client_free(mc);
    CHECK_EQ_INT(world_close(), 0);

    /* A port in use: mandi_new fails, and the loop still closes. */
    world_init(0);
    CHECK(start_mandi(0, ""));
    struct mandi *first = srv;
    struct mandi_opts o = {.max_clients = 1,
                           .sweep_ms = 1000,
                           .max_joins = 1,
                           .max_body = 1024,
                           .max_header_bytes = 1024,
                           .max_headers = 10,
                           .out_pause = 1024,
                           .leader_ttl_ms = 1,
                           .join_ttl_ms = 1};
    char err[256];
    snprintf(o.listen_addr, sizeof o.listen_addr, "127.0.0.1:%d", srv_port);
    CHECK(mandi_new(&loop, &o, err, sizeof err) == NULL);
    CHECK(strstr(err, "address already in use") != NULL);
    snprintf(o.listen_addr, sizeof o.listen_addr, "nonsense");
    CHECK(mandi_new(&loop, &o, err, sizeof err) == NULL);
    srv = first;
    CHECK_EQ_INT(world_close(), 0);
}

static const struct test_case mandi_cases[] = {
    TEST_ENTRY(json_u64),
    TEST_ENTRY(parse_leader),
    TEST_ENTRY(parse_refuses_control_characters_and_implausible_addresses),
    TEST_ENTRY(json_round_trip),
    TEST_ENTRY(escape),
    TEST_ENTRY(term_rule_refuses_absurd_terms),
    TEST_ENTRY(term_rule_never_refuses_a_real_cluster),
    TEST_ENTRY(client_every_request),
    TEST_ENTRY(client_pipelines_in_order),
    TEST_ENTRY(client_sees_409_and_401),
    TEST_ENTRY(client_connection_refused),
    TEST_ENTRY(client_timeout),
    TEST_ENTRY(client_resends_once_after_lost_connection),
    TEST_ENTRY(client_malformed_responses),
    TEST_ENTRY(client_bounds_what_it_reads),
    TEST_ENTRY(client_validates_what_it_reads),
    TEST_ENTRY(client_warnings_are_rate_limited),
    TEST_ENTRY(client_cancel),
    TEST_ENTRY(client_free_with_requests_pending),
    TEST_ENTRY(client_reconnects),
    TEST_ENTRY(client_bad_arguments),
    TEST_ENTRY(server_close_with_clients_connected),
    TEST_END,
};

const struct test_suite suite_mandi = {"mandi", mandi_cases};
