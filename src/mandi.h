/* mandi.h - mandi, the discovery service (`pyazdb-server --mandi`).
 *
 * Mandi holds soft state in memory, never part of Raft correctness: the
 * current leader's LeaderInfo, which the leader PUTs every few seconds, and
 * the join requests of nodes that want to become members, which the leader
 * polls and deletes. The HTTP API is COMPAT.md's (GET/PUT /leader,
 * POST/GET/DELETE /join-requests), with these additions:
 *   - PUT /leader with a lower term than the leader held (and not yet
 *     expired) gets 409 `stale term`: a deposed leader cannot overwrite its
 *     successor. An equal or higher term replaces.
 *   - With a token, PUT /leader and POST/DELETE /join-requests need
 *     `Authorization: Bearer <token>` (401 `unauthorized`); GETs stay open.
 *   - Join requests may carry `http_addr` and `grpc_addr` (optional
 *     strings, returned as "" when not given); their number is capped (503
 *     `too many join requests`).
 *   - Ids must be printable text and addresses must look like host:port
 *     (400 with the reason, see the parsers); a join request needs `addr`.
 *     What a client sends never reaches the log unescaped (pz_escape), and
 *     the lines requests trigger are rate-limited (mandi_loglimit).
 *
 * This header also holds the JSON codec of LeaderInfo and join requests,
 * shared with the nodes' client (mandi_client.h). */
#ifndef PZ_MANDI_H
#define PZ_MANDI_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "pz.h"

#define MANDI_ID_MAX 255           /* longest node id mandi stores, bytes */
#define MANDI_ADDR_MAX 300         /* longest address mandi stores, bytes */
#define MANDI_TIME_MAX 40          /* room for an RFC 3339 timestamp */
#define MANDI_MAX_BODY (64 * 1024) /* request bodies, unless lower in cfg */

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
};

/* --- JSON codec (pure) ----------------------------------------------------
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

/* --- log lines that the network can trigger ------------------------------
 * A client (or, for a node, a broken mandi) can make a line happen as
 * often as it likes: such lines go through a limit of `burst` lines per
 * `window_ms`. Untrusted text in them goes through pz_escape(). */
struct mandi_loglimit {
    uint64_t start;   /* ms: when the current window began */
    unsigned used;    /* lines let through in it */
    unsigned dropped; /* lines held back since the last one let through */
};

/* May a line be written at now (ms)? On true, *dropped is the number of
 * lines held back before this one (say so in, or before, the line) and
 * the count restarts; on false, *dropped is 0 and this line is counted.
 * A zeroed struct is ready for use. Pure. */
bool mandi_loglimit(struct mandi_loglimit *l, uint64_t now, uint64_t window_ms,
                    unsigned burst, unsigned *dropped);

/* --- the server -------------------------------------------------------- */

struct mandi_opts {
    char listen_addr[CFG_ADDR_MAX + 3]; /* host:port; port 0 picks one */
    const char *token;       /* borrowed; "" or NULL: writes are open */
    uint64_t leader_ttl_ms;  /* leader forgotten after this */
    uint64_t join_ttl_ms;    /* join request forgotten after this */
    uint64_t sweep_ms;       /* expired entries dropped this often */
    size_t max_joins;        /* join requests held at most */
    size_t max_clients;      /* open connections at most */
    size_t max_body;         /* request body bytes (413 beyond) */
    size_t max_header_bytes; /* request line + headers (431 beyond) */
    size_t max_headers;      /* header fields per request */
    size_t out_pause;        /* stop serving a connection whose unread
                                output passes this, until it drains */
};

struct mandi;

/* Options from the configuration: mandi-addr's host:port, cluster-token
 * (borrowed from cfg), the mandi-* directives, max-clients, the http-*
 * limits (the body capped at MANDI_MAX_BODY) and conn-high-water.
 * Returns 0 or PZ_EINVAL for a mandi-addr that is not http://host:port. */
int mandi_opts_from_config(const struct pz_config *cfg, struct mandi_opts *o);

/* Listen and serve on loop. The caller owns the loop and must have called
 * conn_setup() and run conn_before_sleep() from its prepare hook (as
 * mandi_run() does); the caller's 1 s conn_cron() applies the idle
 * timeout. opts is copied (the token too). Returns NULL with a message in
 * err when the address cannot be bound. */
struct mandi *mandi_new(uv_loop_t *loop, const struct mandi_opts *opts,
                        char *err, size_t errlen);
/* The port actually bound (useful with port 0). */
int mandi_port(const struct mandi *m);
/* Stop: no new connections, every open connection closes once the replies
 * already produced are written (forced after 2 s), state is dropped. cb
 * (may be NULL) runs once every handle is closed and m is freed. */
void mandi_close(struct mandi *m, void (*cb)(void *data), void *data);

/* Mandi mode: its own loop, SIGINT/SIGTERM for a graceful stop (a second
 * signal exits at once). Returns the process exit code: 0 after a clean
 * stop, 1 when it cannot start or the loop does not close cleanly. */
int mandi_run(const struct pz_config *cfg);

#endif
