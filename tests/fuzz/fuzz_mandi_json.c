/* fuzz_mandi_json.c - mandi's JSON codec (mandi_codec.c): LeaderInfo (PUT /leader, and
 * GET /leader as the nodes' client reads it), join requests (POST
 * /join-requests) and exact 64-bit integers (mandi_json_u64).
 *
 * The input is the body (or, for mandi_parse_joins, the answer to GET
 * /join-requests). Invariants: the parsers agree with the reader (json.c)
 * about validity; every element of a join list is taken, refused or
 * counted past the cap; what parses has non-empty ids and NUL-terminated
 * fields within their buffers, and survives a round trip through the
 * encoder (mandi_*_to_json) unchanged; an error always says why.
 * The codec (mandi_codec.c) links alone, with the reader and pz.c. */
#include "fuzz.h"

#include "json.h"
#include "mandi_codec.h"
#include "pz.h"

static void check_str(const char *s, size_t cap)
{
    FUZZ_CHECK(memchr(s, 0, cap) != NULL);
}

static void check_leader(const char *doc, size_t len, int strict)
{
    struct mandi_leader l, l2;
    char why[128] = "";
    memset(&l, 0x55, sizeof l); /* garbage in: the parser sets every field */
    int rv = mandi_parse_leader(doc, len, &l, why, sizeof why);
    FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);
    if (rv != 0) {
        FUZZ_CHECK(why[0] != '\0' && memchr(why, 0, sizeof why) != NULL);
        return;
    }
    FUZZ_CHECK(strict == 0);
    check_str(l.id, sizeof l.id);
    check_str(l.addr, sizeof l.addr);
    check_str(l.http_addr, sizeof l.http_addr);
    check_str(l.grpc_addr, sizeof l.grpc_addr);
    check_str(l.updated_at, sizeof l.updated_at);
    FUZZ_CHECK(l.id[0] != '\0');

    struct pz_buf out;
    pz_buf_init(&out);
    mandi_leader_to_json(&l, true, &out);
    memset(&l2, 0x55, sizeof l2);
    rv = mandi_parse_leader(out.data, out.len, &l2, why, sizeof why);
    FUZZ_CHECKF(rv == 0, "own output refused: %s", why);
    FUZZ_CHECK(strcmp(l.id, l2.id) == 0 && strcmp(l.addr, l2.addr) == 0 &&
               strcmp(l.http_addr, l2.http_addr) == 0 &&
               strcmp(l.grpc_addr, l2.grpc_addr) == 0 &&
               strcmp(l.updated_at, l2.updated_at) == 0 && l.term == l2.term);
    uint64_t t = 0;
    FUZZ_CHECK(mandi_json_u64(out.data, out.len, "term", &t) == 1 &&
               t == l.term);
    pz_buf_free(&out);
}

static void check_join(const char *doc, size_t len, int strict)
{
    struct mandi_join j, j2;
    char why[128] = "";
    memset(&j, 0x55, sizeof j);
    int rv = mandi_parse_join(doc, len, &j, why, sizeof why);
    FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);
    if (rv != 0) {
        FUZZ_CHECK(why[0] != '\0' && memchr(why, 0, sizeof why) != NULL);
        return;
    }
    FUZZ_CHECK(strict == 0);
    check_str(j.id, sizeof j.id);
    check_str(j.addr, sizeof j.addr);
    check_str(j.http_addr, sizeof j.http_addr);
    check_str(j.grpc_addr, sizeof j.grpc_addr);
    check_str(j.started_at, sizeof j.started_at);
    FUZZ_CHECK(j.id[0] != '\0');

    struct pz_buf out;
    pz_buf_init(&out);
    mandi_join_to_json(&j, true, &out);
    memset(&j2, 0x55, sizeof j2);
    rv = mandi_parse_join(out.data, out.len, &j2, why, sizeof why);
    FUZZ_CHECKF(rv == 0, "own output refused: %s", why);
    FUZZ_CHECK(strcmp(j.id, j2.id) == 0 && strcmp(j.addr, j2.addr) == 0 &&
               strcmp(j.http_addr, j2.http_addr) == 0 &&
               strcmp(j.grpc_addr, j2.grpc_addr) == 0 &&
               strcmp(j.started_at, j2.started_at) == 0);
    pz_buf_free(&out);
}

static void check_u64(const char *doc, size_t len, const char *name,
                      int strict)
{
    uint64_t v = 12345;
    int rv = mandi_json_u64(doc, len, name, &v);
    FUZZ_CHECK(rv == 0 || rv == 1 || rv == PZ_EINVAL);
    if (strict != 0)
        FUZZ_CHECK(rv == PZ_EINVAL);
    if (rv != 1) {
        FUZZ_CHECK(v == 12345); /* untouched */
        return;
    }
    /* A number member, for the reader too. */
    struct json_val root, m;
    FUZZ_CHECK(json_parse(doc, len, &root) == 0 && root.type == JSON_OBJECT);
    FUZZ_CHECK(json_get(&root, name, &m) && m.type == JSON_NUMBER);
}

/* GET /join-requests' answer as a node reads it. */
static void check_joins(const char *doc, size_t len, size_t max)
{
    struct mandi_join *js = (struct mandi_join *)1;
    size_t n = 99, invalid = 99, over = 99;
    int rv = mandi_parse_joins(doc, len, max, &js, &n, &invalid, &over);
    struct json_val root;
    bool array = json_parse(doc, len, &root) == 0 && root.type == JSON_ARRAY;
    FUZZ_CHECK(rv == (array ? 0 : PZ_EINVAL));
    if (rv != 0) {
        FUZZ_CHECK(js == NULL && n == 0 && invalid == 0 && over == 0);
        return;
    }
    FUZZ_CHECK(n <= max && (n == 0) == (js == NULL));
    /* Every element is taken, refused or past max, once. */
    size_t elements = 0;
    struct json_iter it;
    struct json_val el;
    json_iter_init(&it, &root);
    while (json_iter_next(&it, NULL, &el))
        elements++;
    FUZZ_CHECK(n + invalid + over == elements);
    for (size_t i = 0; i < n; i++) {
        check_str(js[i].id, sizeof js[i].id);
        check_str(js[i].addr, sizeof js[i].addr);
        FUZZ_CHECK(js[i].id[0] != '\0' && js[i].addr[0] != '\0');
    }
    pz_free(js);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *doc = (char *)fuzz_dup(data, size);
    struct json_val root;
    int strict = json_parse(doc, size, &root) == 0 && root.type == JSON_OBJECT
                     ? 0
                     : PZ_EINVAL;
    check_leader(doc, size, strict);
    check_join(doc, size, strict);
    check_u64(doc, size, "term", strict);
    check_u64(doc, size, "id", strict);
    check_joins(doc, size, 1024);
    check_joins(doc, size, size % 4);
    free(doc);
    return 0;
}
