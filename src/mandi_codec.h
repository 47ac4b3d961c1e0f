/* mandi_codec.h - mandi's wire types and their JSON codec, shared by
 * mandi (mandi.c, the server) and the nodes' client of it
 * (mandi_client.c): LeaderInfo and join requests, their parsers with the
 * rules on what ids and addresses may hold, and their encoders.
 *
 * The formats are COMPAT.md's (the original Go program's), plus
 * `http_addr` and `grpc_addr` in join requests. Whatever a parser accepts
 * passed the same rules whichever side reads it: mandi refuses a request
 * that breaks them (400 with the parser's reason), a node refuses such an
 * answer from mandi. Ids and addresses come from anyone who can reach
 * mandi, end up in logs, in JSON answers and, for join requests, in the
 * leader's membership proposals: the rules keep out what can make a log
 * line or a terminal lie (control characters, line separators,
 * bidirectional marks) and what is not an address.
 *
 * Pure: no I/O. Documents are read by json.c, written by cJSON. */
#ifndef PZ_MANDI_CODEC_H
#define PZ_MANDI_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pz.h"

#define MANDI_ID_MAX 255   /* longest node id mandi stores, bytes */
#define MANDI_ADDR_MAX 300 /* longest address mandi stores, bytes */
#define MANDI_TIME_MAX 40  /* room for an RFC 3339 timestamp */

/* LeaderInfo. Strings are NUL-terminated and hold no NUL byte. */
struct mandi_leader {
    char id[MANDI_ID_MAX + 1];          /* leader's node id, not empty */
    char addr[MANDI_ADDR_MAX + 1];      /* its Raft address */
    char http_addr[MANDI_ADDR_MAX + 1]; /* its HTTP API address */
    char grpc_addr[MANDI_ADDR_MAX + 1]; /* its gRPC API address */
    uint64_t term;                      /* its Raft term */
    char updated_at[MANDI_TIME_MAX];    /* RFC 3339, set by mandi */
};

/* A join request. */
struct mandi_join {
    char id[MANDI_ID_MAX + 1];          /* joining node's id, not empty */
    char addr[MANDI_ADDR_MAX + 1];      /* its Raft address */
    char http_addr[MANDI_ADDR_MAX + 1]; /* its HTTP address, may be "" */
    char grpc_addr[MANDI_ADDR_MAX + 1]; /* its gRPC address, may be "" */
    char started_at[MANDI_TIME_MAX];    /* RFC 3339, set by mandi */
    uint64_t incarnation;               /* the joiner's data dir: 0 when not
                                           said (the original's nodes) */
};

/* --- JSON codec ----------------------------------------------------------
 * Parsers read one JSON object (strict syntax), take the members they know
 * and ignore the others; a member that is null counts as absent (as in the
 * original Go program). `term` must be a non-negative integer up to
 * 2^64 - 1, read exactly. The id is printable text: valid UTF-8 without
 * control characters (C0, DEL, C1), line or paragraph separators or
 * bidirectional marks. Each address, when given, is host:port, [v6]:port
 * or :port with a port from 1 to 65535, the host made of letters, digits,
 * '.', '-' and '_' (or an IPv6 address); a join request must give `addr`.
 * Return 0, or PZ_EINVAL with one line in why (the body of mandi's 400):
 * "invalid JSON", "missing id", "id too long", "'addr' must be a string",
 * "'id' holds a control character", "'id' is not valid UTF-8", "'addr'
 * must be host:port", "missing addr", "'term' must be an unsigned
 * integer", ... The timestamps are read too when present (a client
 * reading mandi's answer), as "" when too long or not printable; mandi
 * overwrites them. */
int mandi_parse_leader(const char *doc, size_t len, struct mandi_leader *out,
                       char *why, size_t whylen);
int mandi_parse_join(const char *doc, size_t len, struct mandi_join *out,
                     char *why, size_t whylen);
/* GET /join-requests' answer, a JSON array of join requests, as a client
 * reads it: the first max entries that pass mandi_parse_join() go to *out
 * in order (pz_malloc'ed, NULL when none: pz_free it), their number to
 * *n; *invalid counts the entries before those max that do not pass,
 * *over every entry after them. The document is read in place, never
 * built into a tree (json.h), so a large
 * answer costs no more memory than max entries. Returns 0, or PZ_EINVAL
 * (nothing allocated) when doc is not a well-formed JSON array. */
int mandi_parse_joins(const char *doc, size_t len, size_t max,
                      struct mandi_join **out, size_t *n, size_t *invalid,
                      size_t *over);
/* Append the JSON object (no newline). with_time adds updated_at /
 * started_at (mandi's answers); clients leave it out. The term is written
 * as an exact integer. */
void mandi_leader_to_json(const struct mandi_leader *l, bool with_time,
                          struct pz_buf *out);
void mandi_join_to_json(const struct mandi_join *j, bool with_time,
                        struct pz_buf *out);
/* The top-level member `name` of a JSON object as an unsigned 64-bit
 * integer: 1 found (*out set), 0 absent or null, PZ_EINVAL when it is
 * another type, negative, fractional, has an exponent, overflows, or the
 * document is not a well-formed object. */
int mandi_json_u64(const char *doc, size_t len, const char *name,
                   uint64_t *out);

/* --- what ids and addresses may hold --------------------------------------
 * NULL if s[0..n) is printable text (the rule for ids above), else what is
 * wrong: "is not valid UTF-8" or "holds a control character". */
const char *mandi_text_problem(const char *s, size_t n);
/* Is s an address as above (host:port, [v6]:port or :port)? */
bool mandi_plausible_addr(const char *s);

#endif
