/* mandi_codec.c - see mandi_codec.h.
 *
 * Happy path: json_parse() checks the document, each member is looked up
 * (the last of repeated ones counts), decoded and checked against the
 * rules on ids and addresses; the first problem found is the reason
 * given. Encoders go through cJSON, with the term written as an exact
 * integer. */
#include "mandi_codec.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

static bool in_set(char ch, const char *set)
{
    return ch != '\0' && strchr(set, ch) != NULL;
}

/* The root object of doc, or PZ_EINVAL. */
static int parse_object(const char *doc, size_t len, struct json_val *root)
{
    if (json_parse(doc, len, root) < 0 || root->type != JSON_OBJECT)
        return PZ_EINVAL;
    return 0;
}

/* The member `name` of obj as an unsigned integer (mandi_json_u64). */
static int member_u64(const struct json_val *obj, const char *name,
                      uint64_t *out)
{
    struct json_val v;
    if (!json_get(obj, name, &v) || v.type == JSON_NULL)
        return 0;
    return json_u64(&v, out) < 0 ? PZ_EINVAL : 1;
}

int mandi_json_u64(const char *doc, size_t len, const char *name, uint64_t *out)
{
    struct json_val root;
    if (parse_object(doc, len, &root) < 0)
        return PZ_EINVAL;
    return member_u64(&root, name, out);
}

/* --- what an id or an address may hold ----------------------------------
 * Ids and addresses come from anyone who can reach mandi (or, for the
 * nodes' client, from whatever answers as mandi), end up in logs, in JSON
 * answers and, for join requests, in the leader's membership proposals.
 * Text: valid UTF-8 without control characters (C0, DEL, C1, which holds
 * NEL), the Unicode line and paragraph separators, or the marks and
 * embeddings that reorder text on display: none of these belongs in a
 * node name, and each can make a log line or a terminal lie. */

static bool unsafe_code_point(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || pz_cp_disguises_text(cp);
}

/* NULL if s[0..n) is printable text as above, else what is wrong. */
const char *mandi_text_problem(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = pz_utf8_decode(u + i, n - i, &cp);
        if (len == 0)
            return "is not valid UTF-8";
        i += len;
        if (unsafe_code_point(cp))
            return "holds a control character";
    }
    return NULL;
}

static bool all_in(const char *s, size_t n, const char *set)
{
    for (size_t i = 0; i < n; i++)
        if (!in_set(s[i], set))
            return false;
    return true;
}

#define HOST_CHARS                                                             \
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_"

/* Does s look like an address a node listens on? host:port, [v6]:port or
 * :port (a node's http-addr is ":8080" unless set), the port 1 to 65535 in
 * at most 5 digits; a host name or IPv4 address of letters, digits, '.',
 * '-' and '_'; an IPv6 address of hex digits, ':' and '.', with an
 * optional %zone. */
bool mandi_plausible_addr(const char *s)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL)
        return false;
    const char *port = colon + 1;
    size_t pl = strlen(port);
    if (pl == 0 || pl > 5 || !all_in(port, pl, "0123456789"))
        return false;
    long p = strtol(port, NULL, 10);
    if (p < 1 || p > 65535)
        return false;
    size_t hl = (size_t)(colon - s);
    if (hl == 0 || s[0] != '[')
        return all_in(s, hl, HOST_CHARS);
    if (hl < 4 || s[hl - 1] != ']') /* "[::]" at least */
        return false;
    const char *a = s + 1;
    size_t al = hl - 2;
    const char *pct = memchr(a, '%', al);
    size_t v6 = pct ? (size_t)(pct - a) : al;
    if (v6 < 2 || !memchr(a, ':', v6) ||
        !all_in(a, v6, "0123456789abcdefABCDEF:."))
        return false;
    return pct == NULL ||
           (al - v6 > 1 && all_in(pct + 1, al - v6 - 1, HOST_CHARS));
}

enum { F_ID, F_ADDR, F_HTTP, F_GRPC, F_TIME, N_FIELDS };

/* The string members of a LeaderInfo or a join request (the object obj)
 * into dst[]: first the JSON types, NUL bytes and lengths, then the id,
 * then what each member holds. A member that is null counts as absent.
 * The timestamp never fails a document (mandi sets its own); one that is
 * too long or not printable reads as "". */
static int parse_fields(const struct json_val *obj, const char *time_name,
                        char *const dst[N_FIELDS], const size_t cap[N_FIELDS],
                        char *why, size_t whylen)
{
    const char *const names[N_FIELDS] = {"id", "addr", "http_addr", "grpc_addr",
                                         time_name};
    int rv = 0;
    for (int k = 0; k < N_FIELDS; k++)
        dst[k][0] = '\0';
    for (int k = 0; k < N_FIELDS && rv == 0; k++) {
        struct json_val v;
        if (!json_get(obj, names[k], &v) || v.type == JSON_NULL)
            continue;
        if (v.type != JSON_STRING) {
            if (k == F_TIME)
                continue; /* mandi sets it: never fail on it */
            snprintf(why, whylen, "'%s' must be a string", names[k]);
            rv = PZ_EINVAL;
            continue;
        }
        size_t len;
        char *val = json_strdup(&v, &len);
        if (k == F_TIME &&
            (len >= cap[k] || mandi_text_problem(val, len) != NULL)) {
            pz_free(val);
            continue;
        }
        if (memchr(val, '\0', len)) {
            snprintf(why, whylen, "'%s' holds a NUL character", names[k]);
            rv = PZ_EINVAL;
        } else if (len >= cap[k]) {
            snprintf(why, whylen, "%s too long", names[k]);
            rv = PZ_EINVAL;
        } else {
            memcpy(dst[k], val, len + 1);
        }
        pz_free(val);
    }
    if (rv == 0 && dst[F_ID][0] == '\0') {
        snprintf(why, whylen, "missing id");
        rv = PZ_EINVAL;
    }
    for (int k = 0; k < F_TIME && rv == 0; k++) {
        const char *problem = mandi_text_problem(dst[k], strlen(dst[k]));
        if (problem) {
            snprintf(why, whylen, "'%s' %s", names[k], problem);
            rv = PZ_EINVAL;
        } else if (k != F_ID && dst[k][0] && !mandi_plausible_addr(dst[k])) {
            snprintf(why, whylen, "'%s' must be host:port", names[k]);
            rv = PZ_EINVAL;
        }
    }
    return rv;
}

static int leader_of(const struct json_val *obj, struct mandi_leader *out,
                     char *why, size_t whylen)
{
    char *const dst[N_FIELDS] = {out->id, out->addr, out->http_addr,
                                 out->grpc_addr, out->updated_at};
    const size_t cap[N_FIELDS] = {sizeof out->id, sizeof out->addr,
                                  sizeof out->http_addr, sizeof out->grpc_addr,
                                  sizeof out->updated_at};
    out->term = 0;
    int rv = parse_fields(obj, "updated_at", dst, cap, why, whylen);
    if (rv < 0)
        return rv;
    if (member_u64(obj, "term", &out->term) < 0) {
        snprintf(why, whylen, "'term' must be an unsigned integer");
        return PZ_EINVAL;
    }
    return 0;
}

static int join_of(const struct json_val *obj, struct mandi_join *out,
                   char *why, size_t whylen)
{
    char *const dst[N_FIELDS] = {out->id, out->addr, out->http_addr,
                                 out->grpc_addr, out->started_at};
    const size_t cap[N_FIELDS] = {sizeof out->id, sizeof out->addr,
                                  sizeof out->http_addr, sizeof out->grpc_addr,
                                  sizeof out->started_at};
    if (obj->type != JSON_OBJECT) {
        snprintf(why, whylen, "invalid JSON");
        return PZ_EINVAL;
    }
    out->incarnation = 0;
    int rv = parse_fields(obj, "started_at", dst, cap, why, whylen);
    if (rv == 0 && out->addr[0] == '\0') {
        /* The leader adds the node at this address: nothing to add. */
        snprintf(why, whylen, "missing addr");
        rv = PZ_EINVAL;
    }
    if (rv == 0 && member_u64(obj, "incarnation", &out->incarnation) < 0) {
        snprintf(why, whylen, "'incarnation' must be an unsigned integer");
        rv = PZ_EINVAL;
    }
    return rv;
}

int mandi_parse_leader(const char *doc, size_t len, struct mandi_leader *out,
                       char *why, size_t whylen)
{
    struct json_val root;
    if (parse_object(doc, len, &root) < 0) {
        out->term = 0;
        snprintf(why, whylen, "invalid JSON");
        return PZ_EINVAL;
    }
    return leader_of(&root, out, why, whylen);
}

int mandi_parse_join(const char *doc, size_t len, struct mandi_join *out,
                     char *why, size_t whylen)
{
    struct json_val root;
    if (parse_object(doc, len, &root) < 0) {
        snprintf(why, whylen, "invalid JSON");
        return PZ_EINVAL;
    }
    return join_of(&root, out, why, whylen);
}

int mandi_parse_joins(const char *doc, size_t len, size_t max,
                      struct mandi_join **out, size_t *n, size_t *invalid,
                      size_t *over)
{
    struct json_val root, el;
    struct json_iter it;
    struct mandi_join *js = NULL;
    size_t cap = 0, cnt = 0;
    char why[128];
    *out = NULL;
    *n = *invalid = *over = 0;
    if (json_parse(doc, len, &root) < 0 || root.type != JSON_ARRAY)
        return PZ_EINVAL;
    json_iter_init(&it, &root);
    while (json_iter_next(&it, NULL, &el)) {
        if (cnt >= max) {
            (*over)++;
            continue;
        }
        if (cnt == cap) {
            cap = PZ_MIN(cap ? 2 * cap : 8, max);
            js = pz_realloc(js, cap * sizeof *js);
        }
        if (join_of(&el, &js[cnt], why, sizeof why) == 0)
            cnt++;
        else
            (*invalid)++;
    }
    if (cnt == 0) {
        pz_free(js);
        js = NULL;
    }
    *out = js;
    *n = cnt;
    return 0;
}

static void append_json(cJSON *o, struct pz_buf *out)
{
    char *s = cJSON_PrintUnformatted(o);
    pz_assert(s != NULL);
    pz_buf_append(out, s, strlen(s));
    cJSON_free(s);
    cJSON_Delete(o);
}

void mandi_leader_to_json(const struct mandi_leader *l, bool with_time,
                          struct pz_buf *out)
{
    cJSON *o = cJSON_CreateObject();
    char num[24];
    cJSON_AddStringToObject(o, "id", l->id);
    cJSON_AddStringToObject(o, "addr", l->addr);
    cJSON_AddStringToObject(o, "http_addr", l->http_addr);
    cJSON_AddStringToObject(o, "grpc_addr", l->grpc_addr);
    /* Raw: cJSON's doubles would round terms above 2^53. */
    snprintf(num, sizeof num, "%llu", (unsigned long long)l->term);
    cJSON_AddRawToObject(o, "term", num);
    if (with_time)
        cJSON_AddStringToObject(o, "updated_at", l->updated_at);
    append_json(o, out);
}

static cJSON *join_object(const struct mandi_join *j, bool with_time)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", j->id);
    cJSON_AddStringToObject(o, "addr", j->addr);
    cJSON_AddStringToObject(o, "http_addr", j->http_addr);
    cJSON_AddStringToObject(o, "grpc_addr", j->grpc_addr);
    if (j->incarnation != 0) {
        char num[24];
        snprintf(num, sizeof num, "%llu", (unsigned long long)j->incarnation);
        cJSON_AddRawToObject(o, "incarnation", num);
    }
    if (with_time)
        cJSON_AddStringToObject(o, "started_at", j->started_at);
    return o;
}

void mandi_join_to_json(const struct mandi_join *j, bool with_time,
                        struct pz_buf *out)
{
    append_json(join_object(j, with_time), out);
}
