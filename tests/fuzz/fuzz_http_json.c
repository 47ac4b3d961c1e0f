/* fuzz_http_json.c - http_json_strings(), the strict JSON reader behind
 * POST /set, POST /delete, POST /cluster/removed and mandi's bodies.
 *
 * The input is the document. It is read with the member names of each
 * caller and with none (as mandi's validity check does); the outcome must
 * not depend on the names asked for, and each result must be consistent
 * (a string member has a value, others none). Differential check against
 * cJSON (a more lenient parser): a document we accept must parse there
 * too, with the same string values and the same member types. */
#include <cJSON.h>

#include "fuzz.h"

#include "http_parse.h"
#include "pz.h"

static const char *const set_names[] = {"key", "value"};
static const char *const removed_names[] = {"id", "leader", "term"};
static const char *const mandi_names[] = {"id", "addr", "http_addr",
                                          "grpc_addr", "updated_at"};

/* The last member called name (we take the last of repeated ones), or
 * NULL. */
static const cJSON *last_member(const cJSON *obj, const char *name)
{
    const cJSON *found = NULL;
    for (const cJSON *c = obj->child; c; c = c->next)
        if (c->string && strcmp(c->string, name) == 0)
            found = c;
    return found;
}

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

/* A name with a NUL byte or an escape that cJSON would shorten: out of
 * the comparison. */
static bool has_nul_escape(const char *doc, size_t len)
{
    for (size_t i = 0; i + 5 < len; i++)
        if (doc[i] == '\\' && doc[i + 1] == 'u' && doc[i + 2] == '0' &&
            doc[i + 3] == '0' && doc[i + 4] == '0' && doc[i + 5] == '0')
            return true;
    return false;
}

static int run(const char *doc, size_t len, const char *const *names,
               size_t n, const cJSON *cj)
{
    char *vals[8];
    size_t lens[8];
    char types[8];
    for (size_t k = 0; k < n; k++) {
        vals[k] = (char *)1;
        types[k] = '?';
    }
    int rv = http_json_strings(doc, len, names, n, vals, lens, types);
    FUZZ_CHECK(rv == 0 || rv == PZ_EINVAL);
    for (size_t k = 0; k < n; k++) {
        if (rv != 0) {
            FUZZ_CHECK(vals[k] == NULL && types[k] == 'n');
            continue;
        }
        FUZZ_CHECK(types[k] == 's' || types[k] == 'n' || types[k] == 'o');
        FUZZ_CHECK((types[k] == 's') == (vals[k] != NULL));
        FUZZ_CHECK(types[k] == 's' || lens[k] == 0);
        FUZZ_CHECK(types[k] != 's' || lens[k] < len);
        if (cj != NULL) {
            const cJSON *m = last_member(cj, names[k]);
            if (types[k] == 'n') {
                FUZZ_CHECKF(m == NULL, "cJSON has member '%s'", names[k]);
            } else if (types[k] == 'o') {
                FUZZ_CHECKF(m != NULL && !cJSON_IsString(m),
                            "member '%s' is a non-string for us only",
                            names[k]);
            } else {
                FUZZ_CHECKF(m != NULL && cJSON_IsString(m),
                            "member '%s' is a string for us only", names[k]);
                /* cJSON's strings end at their first NUL. */
                const char *nul = memchr(vals[k], 0, lens[k]);
                size_t cmp = nul ? (size_t)(nul - vals[k]) : lens[k];
                FUZZ_CHECKF(strlen(m->valuestring) == cmp &&
                                memcmp(m->valuestring, vals[k], cmp) == 0,
                            "member '%s' differs from cJSON's", names[k]);
            }
        }
        pz_free(vals[k]);
    }
    return rv;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Exactly the document: reading past it is an ASan report. */
    char *doc = (char *)fuzz_dup(data, size);
    int rv0 = http_json_strings(doc, size, NULL, 0, NULL, NULL, NULL);
    FUZZ_CHECK(rv0 == 0 || rv0 == PZ_EINVAL);

    /* cJSON wants the document NUL-terminated to check for trailing
     * bytes. */
    cJSON *cj = NULL;
    if (rv0 == 0 && !has_nul_escape(doc, size)) {
        char *z = malloc(size + 1);
        FUZZ_CHECK(z != NULL);
        memcpy(z, doc, size);
        z[size] = '\0';
        cj = cJSON_ParseWithLengthOpts(z, size + 1, NULL, 1);
        FUZZ_CHECKF(cj != NULL || long_number(doc, size),
                    "we accept a document that cJSON refuses");
        FUZZ_CHECK(cj == NULL || cJSON_IsObject(cj));
        free(z);
    }

    FUZZ_CHECK(run(doc, size, set_names, 2, cj) == rv0);
    FUZZ_CHECK(run(doc, size, set_names, 1, cj) == rv0);
    FUZZ_CHECK(run(doc, size, removed_names, 3, cj) == rv0);
    FUZZ_CHECK(run(doc, size, mandi_names, 5, cj) == rv0);
    cJSON_Delete(cj);
    free(doc);
    return 0;
}
