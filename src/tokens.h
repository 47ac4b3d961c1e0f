/* tokens.h - the client token file (client-token-file): its parser, the
 * lookup of a presented bearer token, and the key checks of one token.
 * Pure: no I/O (auth.c reads the file and applies the checks).
 *
 * Format: one token per line, fields separated by blanks (spaces, tabs):
 *
 *     NAME RIGHTS TOKEN [PREFIX ...]
 *
 *   NAME    1 to 64 characters of [A-Za-z0-9._-], unique in the file: the
 *           name logs and refusals use (the token itself is never shown).
 *   RIGHTS  ro (reads and watches) or rw (reads, watches and writes).
 *   TOKEN   16 to 256 printable ASCII characters without blanks, unique.
 *   PREFIX  up to 32 key prefixes the token may touch (each 1 to 1024 bytes
 *           once decoded): printable ASCII without blanks, %XX for any other
 *           byte (%25 for '%'). None: every key.
 *
 * Blank lines and lines whose first non-blank character is '#' are
 * skipped; a line may end in CRLF. Anything else (an unknown right, a
 * short token, a bad escape, a NUL byte, a duplicate name or token, more
 * than TOKENS_MAX tokens, a file over TOKENS_FILE_MAX bytes) refuses the
 * whole file, naming the line.
 *
 * In memory a token is kept as its SHA-256 digest only; tokens_find()
 * hashes what a client presents and looks its digest up by binary search
 * among the digests, sorted once by tokens_parse: a file of TOKENS_MAX
 * tokens costs n log n comparisons to parse and log n to look a token up
 * (both run on the event loop: a reload, and every request, whatever
 * token it shows). */
#ifndef PZ_TOKENS_H
#define PZ_TOKENS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sha256.h"

#define TOKENS_FILE_MAX (1u << 20) /* bytes of a token file */
#define TOKENS_MAX 10000           /* tokens in one file */
#define TOKEN_NAME_MAX 64          /* characters of a name */
#define TOKEN_MIN 16               /* shortest token */
#define TOKEN_MAX 256              /* longest token */
#define TOKEN_PREFIXES_MAX 32      /* prefixes of one token */
#define TOKEN_PREFIX_MAX 1024      /* bytes of one decoded prefix */

enum {
    TOKEN_READ = 1,  /* read keys, ranges, watches */
    TOKEN_WRITE = 2, /* write keys (granted with TOKEN_READ: rw) */
};

struct token_prefix {
    uint8_t *p;   /* decoded bytes (owned) */
    size_t len;   /* 1..TOKEN_PREFIX_MAX */
    uint8_t *end; /* the end of its keys, kv_prefix_end (owned) */
    long elen;    /* its length; -1: none (the keys run to the end) */
};

struct token {
    char name[TOKEN_NAME_MAX + 1];  /* NUL-terminated */
    uint8_t digest[SHA256_SIZE];    /* SHA-256 of the token */
    int rights;                     /* TOKEN_READ, or TOKEN_READ|WRITE */
    struct token_prefix *prefixes;  /* n_prefixes entries (owned) */
    size_t n_prefixes;              /* 0: every key */
    size_t line;                    /* its line in the file (1-based) */
};

struct token_set {
    struct token *t; /* n entries, in file order (owned) */
    size_t n;
    struct token **by_digest; /* the n entries in digest order (owned) */
};

/* Parse text[0..len). On success returns 0 and a new set in *out
 * (tokens_free it; an empty file gives an empty set). On failure returns
 * PZ_EINVAL, *line is the 1-based line at fault (0: the file as a whole)
 * and why holds one line that never includes a token. */
int tokens_parse(const char *text, size_t len, struct token_set **out,
                 size_t *line, char *why, size_t whylen);
void tokens_free(struct token_set *s);

/* Names and digests compared by tokens_parse and tokens_find so far: tests
 * read it to check the work grows as n log n, not n * n. */
extern unsigned long tokens_compares;

/* The token of the set equal to tok[0..len), or NULL. */
const struct token *tokens_find(const struct token_set *s, const char *tok,
                                size_t len);

/* Is the token limited to prefixes? */
bool token_restricted(const struct token *t);
/* May t touch key k[0..klen)? */
bool token_key_ok(const struct token *t, const uint8_t *k, size_t klen);
/* May t touch every key of [from, to), or of [from, ...) when to_end? A
 * range is allowed when it lies within one prefix's keys. */
bool token_range_ok(const struct token *t, const uint8_t *from, size_t flen,
                    const uint8_t *to, size_t tlen, bool to_end);

#endif
