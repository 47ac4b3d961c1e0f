/* json.h - the one JSON reader: strict RFC 8259 documents, read in place.
 *
 * Every JSON document that reaches PyazDB from the network is read here:
 * the node API's bodies (POST /set, /delete), mandi's bodies and answers
 * (LeaderInfo, join requests), the CLI's view of /cluster, members' meta in
 * configuration entries. cJSON, a
 * dependency, stays the writer; it is not the reader because it cannot
 * keep what these readers guarantee:
 *  - strings are bytes: keys and values may hold \u0000 (the API takes
 *    every JSON escape); cJSON's strings end at their first NUL;
 *  - 64-bit integers (Raft terms) are read exactly; cJSON holds numbers
 *    as doubles, exact only up to 2^53;
 *  - of repeated members the last counts (as in Go's encoding/json, which
 *    the original program used); cJSON's lookup finds the first;
 *  - the grammar is RFC 8259's and nothing more; cJSON takes numbers that
 *    strtod reads, such as "01" or "1.";
 *  - a document is checked once and then read where it lies: nothing is
 *    built, so a join list of a million entries costs its own bytes, not
 *    a tree of a million nodes;
 *  - nesting is bounded at JSON_MAX_DEPTH (the check recurses that deep
 *    at most).
 *
 * Happy path: json_parse() checks a whole document and gives its root
 * value; json_get() finds an object's member, json_iter_next() walks an
 * object's members or an array's elements; json_str()/json_strdup()
 * decode a string to bytes (surrogate pairs to UTF-8), json_u64() reads
 * an unsigned integer exactly. A struct json_val is a span of the
 * document, which must outlive it.
 * Failure modes: json_parse() refuses (PZ_EINVAL) anything but one
 * well-formed JSON value with optional white space around it: bad syntax,
 * unescaped control characters in strings, bad escapes, lone surrogates,
 * nesting deeper than JSON_MAX_DEPTH, trailing bytes. The other functions
 * take only values that json_parse() produced (or walking one did): they
 * never meet bad syntax, and never read outside the value's span.
 * Bytes that are not valid UTF-8 inside strings are kept as they are.
 * Pure: no I/O, no globals. */
#ifndef PZ_JSON_H
#define PZ_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pz.h"

/* Containers nested deeper than this are refused (the root is level 1;
 * a value inside JSON_MAX_DEPTH containers is too deep). */
#define JSON_MAX_DEPTH 64

enum json_type {
    JSON_NULL,
    JSON_FALSE,
    JSON_TRUE,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT,
};

struct json_val {
    enum json_type type; /* what the value is */
    const char *s;       /* its text in the document (a string's with its
                            quotes, a container's with its brackets) */
    size_t len;          /* length of that text */
};

/* Check doc[0..len) (no NUL needed) and set *root to its value. Returns
 * 0 or PZ_EINVAL. */
int json_parse(const char *doc, size_t len, struct json_val *root);

/* A shortcut for the commonest document, an object whose members are all
 * strings with nothing escaped ({"key":"k","value":"v"}): one pass that
 * checks it as json_parse() would and sets names[i] and vals[i] to its
 * members in order, as json_iter_next() would. Returns their number, or
 * -1 when doc is not of that shape or has more than max members (it may
 * still be valid JSON: read it with json_parse()). */
int json_flat(const char *doc, size_t len, struct json_val *names,
              struct json_val *vals, size_t max);

/* Walking a container: init with an object or an array (anything else
 * walks nothing), then json_iter_next() until it returns false. For an
 * object, *name is each member's name (a JSON_STRING, still escaped) and
 * *val its value; for an array name may be NULL and is not set. */
struct json_iter {
    const char *s; /* the container's text */
    size_t n;      /* its length */
    size_t i;      /* read position */
    bool object;   /* members, not elements */
    bool first;    /* nothing read yet */
};
void json_iter_init(struct json_iter *it, const struct json_val *container);
bool json_iter_next(struct json_iter *it, struct json_val *name,
                    struct json_val *val);

/* The last member of obj whose decoded name is name[0..strlen(name)):
 * true with *val set; false when there is none or obj is not an object. */
bool json_get(const struct json_val *obj, const char *name,
              struct json_val *val);

/* Does the string value v decode to exactly name[0..nlen)? */
bool json_str_is(const struct json_val *v, const char *name, size_t nlen);
/* Append the decoded bytes of the string value v to out. */
void json_str(const struct json_val *v, struct pz_buf *out);
/* The decoded bytes of the string value v as a new NUL-terminated copy
 * (pz_free it; it may hold NUL bytes: its length goes to *len). */
char *json_strdup(const struct json_val *v, size_t *len);

/* The number v as an unsigned 64-bit integer, exactly. Returns 0, or
 * PZ_EINVAL when v is not a number, or is negative (-0 too), has a
 * fraction or an exponent, or is over 2^64 - 1. */
int json_u64(const struct json_val *v, uint64_t *out);

/* The writer's one string escaper: append s[0..n) to out as a JSON string
 * with its quotes. Quotes, backslashes and control characters are
 * escaped; a byte that does not begin valid UTF-8 becomes U+FFFD, so the
 * result is always valid JSON whatever s holds. */
void json_put_string(struct pz_buf *out, const void *s, size_t n);

#endif
