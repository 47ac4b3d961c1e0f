/* fuzz_http_json.c - json.c, the one JSON reader: behind POST /set, POST
 * /delete, POST /cluster/removed, mandi's bodies and answers, and the
 * CLI's /cluster.
 *
 * The input is the document. Invariants: a document json_parse() accepts
 * is walked without reading outside it (ASan), every value found has a
 * type that matches its text, strings decode to no more bytes than their
 * text, and the members each caller asks for (json_get) are the last ones
 * of that name. Differential check against cJSON (a more lenient parser):
 * a document we accept must parse there too, to the same tree: the same
 * types, member names and order, string values, and numbers (exactly
 * where json_u64 reads them and cJSON's double can hold them). And
 * json_flat(), the one-pass reader of objects of plain strings, against
 * json_parse() and json_iter_next(): it reads a document exactly when it
 * is such an object, and finds the same members. */
#include <cJSON.h>

#include "fuzz.h"

#include "json.h"
#include "pz.h"

static const char *const names[] = {"key",  "value",     "id",
                                    "addr", "http_addr", "grpc_addr",
                                    "term", "leader",    "updated_at"};

/* cJSON cannot read a number of more than 63 characters (it copies it
 * into a fixed buffer): documents holding one are out of the comparison. */
static bool long_number(const char *doc, size_t len)
{
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        char c = doc[i];
        bool num = (c >= '0' && c <= '9') || c == '-' || c == '+' ||
                   c == '.' || c == 'e' || c == 'E';
        run = num ? run + 1 : 0;
        if (run >= 60)
            return true;
    }
    return false;
}

/* A \u0000 escape, which cJSON would cut the string at: out of the
 * comparison. */
static bool has_nul_escape(const char *doc, size_t len)
{
    for (size_t i = 0; i + 5 < len; i++)
        if (doc[i] == '\\' && doc[i + 1] == 'u' && doc[i + 2] == '0' &&
            doc[i + 3] == '0' && doc[i + 4] == '0' && doc[i + 5] == '0')
            return true;
    return false;
}

static void check_string(const struct json_val *v)
{
    size_t len;
    char *s = json_strdup(v, &len);
    FUZZ_CHECK(len + 2 <= v->len);
    FUZZ_CHECK(s[len] == '\0');
    FUZZ_CHECK(json_str_is(v, s, len));
    pz_free(s);
}

/* Walk v (and compare it with cj, when not NULL). */
static void walk(const struct json_val *v, const cJSON *cj)
{
    FUZZ_CHECK(v->len > 0);
    switch (v->type) {
    case JSON_STRING:
        FUZZ_CHECK(v->s[0] == '"' && v->s[v->len - 1] == '"');
        check_string(v);
        if (cj) {
            FUZZ_CHECK(cJSON_IsString(cj));
            size_t len;
            char *s = json_strdup(v, &len);
            FUZZ_CHECKF(strcmp(s, cj->valuestring) == 0,
                        "string differs from cJSON's");
            pz_free(s);
        }
        return;
    case JSON_NUMBER: {
        uint64_t x;
        if (cj)
            FUZZ_CHECK(cJSON_IsNumber(cj));
        if (json_u64(v, &x) == 0 && cj && x < (1ull << 53))
            FUZZ_CHECKF(cj->valuedouble == (double)x,
                        "number %llu differs from cJSON's",
                        (unsigned long long)x);
        return;
    }
    case JSON_NULL:
        FUZZ_CHECK(v->len == 4 && (cj == NULL || cJSON_IsNull(cj)));
        return;
    case JSON_TRUE:
        FUZZ_CHECK(v->len == 4 && (cj == NULL || cJSON_IsTrue(cj)));
        return;
    case JSON_FALSE:
        FUZZ_CHECK(v->len == 5 && (cj == NULL || cJSON_IsFalse(cj)));
        return;
    case JSON_ARRAY:
    case JSON_OBJECT:
        break;
    }
    bool obj = v->type == JSON_OBJECT;
    FUZZ_CHECK(v->s[0] == (obj ? '{' : '['));
    FUZZ_CHECK(v->s[v->len - 1] == (obj ? '}' : ']'));
    if (cj)
        FUZZ_CHECK(obj ? cJSON_IsObject(cj) : cJSON_IsArray(cj));
    const cJSON *c = cj ? cj->child : NULL;
    struct json_iter it;
    struct json_val name, val;
    json_iter_init(&it, v);
    while (json_iter_next(&it, &name, &val)) {
        FUZZ_CHECK(val.s >= v->s && val.s + val.len <= v->s + v->len);
        if (obj) {
            FUZZ_CHECK(name.type == JSON_STRING);
            check_string(&name);
        }
        if (cj) {
            FUZZ_CHECKF(c != NULL, "cJSON has fewer members");
            if (obj) {
                size_t len;
                char *n = json_strdup(&name, &len);
                FUZZ_CHECKF(strcmp(n, c->string) == 0,
                            "member name differs from cJSON's");
                pz_free(n);
            }
        }
        walk(&val, c);
        if (c)
            c = c->next;
    }
    FUZZ_CHECKF(c == NULL, "cJSON has more members");
}

/* The last member called name, as json_get must find it. */
static const cJSON *last_member(const cJSON *obj, const char *name)
{
    const cJSON *found = NULL;
    for (const cJSON *c = obj->child; c; c = c->next)
        if (c->string && strcmp(c->string, name) == 0)
            found = c;
    return found;
}

#define FLAT_MAX 4

/* json_flat() gave flat for the document json_parse() read as root (rv):
 * the same members, and -1 only for what is not a small object of plain
 * strings. */
static void check_flat(int rv, const struct json_val *root, int flat,
                       const struct json_val *fn, const struct json_val *fv)
{
    FUZZ_CHECKF(flat < 0 || rv == 0, "json_flat reads what json_parse refuses");
    if (rv != 0 || root->type != JSON_OBJECT) {
        FUZZ_CHECKF(flat < 0, "json_flat reads what is not an object");
        return;
    }
    struct json_iter it;
    struct json_val name, val;
    int n = 0;
    bool plain = true;
    json_iter_init(&it, root);
    while (json_iter_next(&it, &name, &val)) {
        if (val.type != JSON_STRING || memchr(name.s, '\\', name.len) ||
            memchr(val.s, '\\', val.len))
            plain = false;
        if (flat >= 0) {
            FUZZ_CHECKF(n < flat, "json_flat found fewer members");
            FUZZ_CHECK(fn[n].s == name.s && fn[n].len == name.len &&
                       fn[n].type == JSON_STRING);
            FUZZ_CHECK(fv[n].s == val.s && fv[n].len == val.len &&
                       fv[n].type == JSON_STRING);
        }
        n++;
    }
    FUZZ_CHECKF(flat < 0 || n == flat, "json_flat found more members");
    FUZZ_CHECKF(flat >= 0 || !plain || n > FLAT_MAX,
                "json_flat refuses an object of plain strings");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Exactly the document: reading past it is an ASan report. */
    char *doc = (char *)fuzz_dup(data, size);
    struct json_val root, fn[FLAT_MAX], fv[FLAT_MAX];
    int rv = json_parse(doc, size, &root);
    FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);
    check_flat(rv, &root, json_flat(doc, size, fn, fv, FLAT_MAX), fn, fv);
    if (rv != 0) {
        free(doc);
        return 0;
    }
    FUZZ_CHECK(root.s >= doc && root.s + root.len <= doc + size);

    /* cJSON wants the document NUL-terminated to check for trailing
     * bytes. */
    cJSON *cj = NULL;
    if (!has_nul_escape(doc, size)) {
        char *z = malloc(size + 1);
        FUZZ_CHECK(z != NULL);
        memcpy(z, doc, size);
        z[size] = '\0';
        cj = cJSON_ParseWithLengthOpts(z, size + 1, NULL, 1);
        FUZZ_CHECKF(cj != NULL || long_number(doc, size),
                    "we accept a document that cJSON refuses");
        free(z);
    }
    walk(&root, cj);

    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        struct json_val v;
        bool found = json_get(&root, names[k], &v);
        FUZZ_CHECK(!found || root.type == JSON_OBJECT);
        if (found)
            FUZZ_CHECK(v.s > root.s && v.s + v.len < root.s + root.len);
        if (cj && cJSON_IsObject(cj)) {
            const cJSON *m = last_member(cj, names[k]);
            FUZZ_CHECKF(found == (m != NULL), "member '%s' found by one only",
                        names[k]);
            if (found) {
                FUZZ_CHECKF((v.type == JSON_STRING) == cJSON_IsString(m),
                            "member '%s' is a string for one only", names[k]);
                if (v.type == JSON_STRING) {
                    size_t len;
                    char *s = json_strdup(&v, &len);
                    FUZZ_CHECKF(strcmp(s, m->valuestring) == 0,
                                "member '%s' differs from cJSON's", names[k]);
                    pz_free(s);
                }
            }
        }
    }
    cJSON_Delete(cj);
    free(doc);
    return 0;
}
