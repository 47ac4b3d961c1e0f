/* http_parse.h - HTTP/1.1 request parsing and the key-value API's request
 * rules, with no I/O (llhttp underneath). The connection layer (http.c)
 * feeds it bytes and turns its results into replies; unit tests feed it the
 * same bytes whole, pipelined or one at a time.
 *
 * Happy path: http_parser_feed() consumes bytes until one request is
 * complete, then stops (returns HTTP_PARSE_REQUEST) so that pipelined
 * requests are served strictly one after another; the caller serves p->req,
 * calls http_parser_next() and feeds the bytes it had left over.
 * Failure modes: malformed input (a request line without an HTTP version
 * too: HTTP/0.9 is not spoken), a body over the limit (413, as soon as a
 * Content-Length or a chunk size announces it), headers over the limit
 * (431) or a URL over the limit (414) end in HTTP_PARSE_ERROR with a
 * status and a one-line reason; the parser is then dead and the caller
 * replies and closes the connection.
 *
 * Memory: the parser reports what it holds for the request in progress
 * (http_parser_held) so the caller can charge it to the partial-input
 * budget; a body buffer grows with the bytes that arrived (at most twice
 * that, and never past the announced length), and http_parser_next() lets
 * large buffers go, so a connection keeps nothing large between requests. */
#ifndef PZ_HTTP_PARSE_H
#define PZ_HTTP_PARSE_H

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>

#include "pz.h"

struct http_limits {
    size_t max_header_bytes; /* request line + headers, bytes */
    size_t max_headers;      /* number of header lines */
    size_t max_body;         /* body bytes */
};

struct http_header {
    char *name;  /* lowercased, NUL-terminated */
    char *value; /* NUL-terminated (values with NUL bytes are refused) */
    size_t nlen; /* strlen(name) unless the name holds a NUL */
    size_t vlen; /* strlen(value) */
};

struct http_req {
    int method;                  /* llhttp_method_t */
    struct pz_buf url;           /* request target as sent */
    struct pz_buf body;          /* whole body */
    struct http_header *headers; /* n_headers entries (their strings are
                                    valid once the headers are complete) */
    size_t n_headers;            /* headers kept */
    bool keep_alive;             /* connection stays open after reply */
};

/* How far the request in progress got (struct http_parser.phase). */
enum http_phase {
    HTTP_PHASE_IDLE = 0,    /* nothing of a request yet (blank lines aside) */
    HTTP_PHASE_HEADERS = 1, /* request line and headers arriving */
    HTTP_PHASE_BODY = 2,    /* headers complete, body arriving */
    HTTP_PHASE_DONE = 3,    /* the request is complete */
};

enum {
    HTTP_PARSE_NEED_MORE = 0, /* everything consumed, request incomplete */
    HTTP_PARSE_REQUEST = 1,   /* p->req is complete */
    HTTP_PARSE_ERROR = 2,     /* p->err_status / p->err_reason set */
};

/* struct http_parser.hdr_state. */
enum {
    HDR_NONE = 0,  /* no header being assembled */
    HDR_NAME = 1,  /* its name arriving */
    HDR_VALUE = 2, /* name complete, its value arriving */
};

struct http_parser {
    llhttp_t ll;                 /* the llhttp state machine */
    llhttp_settings_t settings;  /* callbacks (same for every parser) */
    struct http_limits lim;      /* copied from init */
    struct http_req req;         /* request being parsed or complete */
    struct pz_buf hdr_text;      /* req.headers' names and values, then
                                    the header being assembled */
    int hdr_state;               /* HDR_*: how far that header got */
    size_t hdr_start;            /* offset of its name in hdr_text */
    size_t hdr_value;            /* offset of its value (HDR_VALUE) */
    size_t header_bytes;         /* bytes of request line + headers */
    size_t headers_held;         /* bytes of req.headers entries */
    size_t cap_headers;          /* entries req.headers has room for */
    uint64_t body_expected;      /* Content-Length, 0 when not given */
    size_t skipped;              /* blank-line bytes before this request */
    int phase;                   /* enum http_phase */
    bool complete;               /* req is complete, waiting for next() */
    bool dead;                   /* an error was returned: feed no more */
    int err_status;              /* HTTP status for HTTP_PARSE_ERROR */
    char err_reason[128];        /* one-line reason, no newline */
};

void http_parser_init(struct http_parser *p, const struct http_limits *lim);
void http_parser_free(struct http_parser *p);
/* Feed len bytes; *used says how many were consumed. On HTTP_PARSE_REQUEST
 * the unconsumed rest belongs to later requests: keep it and feed it again
 * after http_parser_next(). */
int http_parser_feed(struct http_parser *p, const char *data, size_t len,
                     size_t *used);
/* Forget the served request and get ready for the next one. Buffers that
 * grew large for it are freed. */
void http_parser_next(struct http_parser *p);
/* True once a request has begun: a byte of it arrived, or more blank lines
 * than a client sends between requests. A request's header time runs from
 * here. */
bool http_parser_started(const struct http_parser *p);
/* Bytes the parser holds for the request in progress: its buffers (by
 * capacity) and the headers kept so far. */
size_t http_parser_held(const struct http_parser *p);
/* Header value by lowercase name, or NULL. */
const char *http_req_header(const struct http_req *r, const char *name);
/* The credential in an Authorization value of n bytes at *v, "Bearer X"
 * (the scheme in any case, blanks around X dropped): true with *v and *n
 * narrowed to X (never empty); false when it is not a bearer credential. */
bool http_bearer_value(const char **v, size_t *n);

/* Split the request target into its path (percent-decoded, NUL-terminated,
 * into path) and look up one query parameter. http_query_get() returns 1 and
 * a freshly allocated decoded value (pz_free it; may hold NUL bytes, length
 * in *len) when found, 0 when absent, PZ_EINVAL for bad percent-encoding. */
int http_url_path(const char *url, size_t urllen, struct pz_buf *path);
int http_query_get(const char *url, size_t urllen, const char *name,
                   char **val, size_t *len);

/* Append a percent-decoded copy of s[0..n) to out; PZ_EINVAL on a bad
 * escape. '+' is a space in query strings only (plus_is_space). */
int http_pct_decode(struct pz_buf *out, const char *s, size_t n,
                    bool plus_is_space);
/* Append s[0..n) to out percent-encoded for a path segment or a query
 * value: every byte but the unreserved ones (RFC 3986: letters, digits,
 * '-', '.', '_', '~') becomes %XX. */
void http_pct_encode(struct pz_buf *out, const char *s, size_t n);

/* --- the key-value API's requests ------------------------------------------
 * http_api_decode() turns a complete request into what to do, applying
 * every rule of COMPAT.md that needs no state: paths, methods, parameters,
 * JSON bodies and size limits. */
enum http_op_kind {
    HTTP_OP_ERROR = 0, /* reply status/reason (and allow) at once */
    HTTP_OP_GET,       /* read key */
    HTTP_OP_SET,       /* write key = value */
    HTTP_OP_DEL,       /* delete key */
    HTTP_OP_HEALTH,    /* GET /health */
    HTTP_OP_STATUS,    /* GET /status */
    HTTP_OP_CLUSTER,   /* GET /cluster */
    HTTP_OP_REMOVE,    /* DELETE /cluster/members/ID: key = ID */
    HTTP_OP_TRANSFER,  /* POST /cluster/transfer?to=ID: key = ID */
    HTTP_OP_SNAPSHOT,  /* POST /admin/snapshot */
    HTTP_OP_BACKUP,    /* GET /admin/snapshot: stream a fresh snapshot */
    HTTP_OP_RANGE,     /* GET /range: keys [key, end) */
    HTTP_OP_TXN,       /* POST /txn, a conditional /set or /delete, a
                          /delete of a prefix: propose cmd */
    HTTP_OP_METRICS,   /* GET /metrics */
    HTTP_OP_WATCH,     /* GET /watch: parameters read by http_watch.c */
    HTTP_OP_LEASE_GRANT,     /* POST /lease/grant: lease_ttl, lease_id
                                (0: the leader picks one) */
    HTTP_OP_LEASE_KEEPALIVE, /* POST /lease/keepalive: lease_id */
    HTTP_OP_LEASE_REVOKE,    /* POST /lease/revoke: lease_id */
    HTTP_OP_LEASE_GET,       /* GET /lease?id=: lease_id, keys_only = list
                                its keys (keys=true) */
    HTTP_OP_LEASE_LIST,      /* GET /leases */
};

/* What an HTTP_OP_TXN asks, for the shape of its answer. */
enum http_txn_kind {
    HTTP_TXN_JSON = 0,  /* POST /txn: every result */
    HTTP_TXN_SET,       /* /set with conditions: 204, or 412 */
    HTTP_TXN_DEL,       /* /delete with conditions: 204, or 412 */
    HTTP_TXN_DELPREFIX, /* /delete of a prefix: the count deleted */
};

#define HTTP_RANGE_LIMIT 1000      /* /range limit when none is given */
#define HTTP_RANGE_LIMIT_MAX 10000 /* largest limit /range takes */

struct http_api_limits {
    size_t max_key;   /* bytes */
    size_t max_value; /* bytes */
};

struct http_op {
    enum http_op_kind kind; /* what to do */
    char *key;              /* HTTP_OP_GET/SET/DEL: owned, pz_free */
    size_t klen;            /* key length (may hold NUL bytes) */
    char *value;            /* HTTP_OP_SET: owned */
    size_t vlen;            /* value length */
    bool stale;             /* GET: consistency=stale */
    bool serializable;      /* /health: serializable=true (liveness) */
    bool needs_auth;        /* changes the cluster: cluster-token applies */
    int status;             /* HTTP_OP_ERROR: HTTP status */
    const char *reason;     /* HTTP_OP_ERROR: one line, no newline */
    const char *allow;      /* 405: the Allow header value */
    char *end;              /* RANGE: end of the range (owned) */
    size_t elen;            /* its length */
    bool to_end;            /* RANGE: no end */
    uint64_t limit;         /* RANGE: most keys */
    bool keys_only;         /* RANGE: no values */
    bool count_only;        /* RANGE: only the count */
    int txn_kind;           /* TXN: enum http_txn_kind */
    struct pz_buf cmd;      /* TXN: the encoded command (owned) */
    uint64_t lease;         /* SET: "lease" (0: none) */
    uint64_t lease_id;      /* LEASE_*: the lease */
    uint64_t lease_ttl;     /* LEASE_GRANT: seconds */
};

/* Standard base64 (RFC 4648, with padding). decode returns 0 or PZ_EINVAL
 * (bad character, bad length or padding); both append to out. Keys and
 * values that are not UTF-8 travel as "key_b64" / "value_b64". */
int http_b64_decode(struct pz_buf *out, const char *s, size_t n);
void http_b64_encode(struct pz_buf *out, const void *p, size_t n);
/* p[0..n) as a JSON string, quotes included, appended to out: '"', '\\'
 * and control characters escaped, the other bytes as they are (valid
 * UTF-8 is the caller's check). At most 6 * n + 2 bytes. */
void http_json_str(struct pz_buf *out, const void *p, size_t n);
/* s[0..n) as a revision: decimal digits only (no sign, no space), at
 * most the store's highest (KV_REVISION_MAX), so that a revision + 1
 * cannot wrap. false leaves *out alone. */
bool http_parse_revision(const char *s, size_t n, uint64_t *out);

void http_api_decode(const struct http_req *req,
                     const struct http_api_limits *lim, struct http_op *op);
void http_op_free(struct http_op *op);

#endif
