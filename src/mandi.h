/* mandi.h - mandi, the discovery service (`pyazdb-server --mandi`).
 *
 * Mandi holds soft state in memory, never part of Raft correctness: the
 * current leader's LeaderInfo, which the leader PUTs every few seconds, and
 * the join requests of nodes that want to become members, which the leader
 * polls and deletes. The HTTP API is COMPAT.md's (GET/PUT /leader,
 * POST/GET/DELETE /join-requests), with these additions:
 *   - PUT /leader with a lower term than the leader held (and not yet
 *     expired) gets 409 `stale term`: a deposed leader cannot overwrite its
 *     successor. An equal or higher term replaces. A term far above any
 *     recent one gets 400 `implausible term ...` (the term rule below).
 *   - With a token, PUT /leader and POST/DELETE /join-requests need
 *     `Authorization: Bearer <token>` (401 `unauthorized`); GETs stay open.
 *   - Join requests may carry `http_addr` and `grpc_addr` (optional
 *     strings, returned as "" when not given); their number is capped (503
 *     `too many join requests`).
 *   - Ids must be printable text and addresses must look like host:port
 *     (400 with the reason, see the parsers); a join request needs `addr`.
 *     What a client sends never reaches the log unescaped (pz_escape), and
 *     the lines requests trigger are rate-limited (pz_ratelimit).
 *
 * The wire types and their JSON codec, shared with the nodes' client
 * (mandi_client.h), are in mandi_codec.h. */
#ifndef PZ_MANDI_H
#define PZ_MANDI_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "pz.h"

#define MANDI_MAX_BODY (64 * 1024) /* request bodies, unless lower in cfg */

/* --- the term rule (pure) -------------------------------------------------
 * Mandi is not in the cluster and cannot check a term; it can refuse what
 * no real cluster produces. Terms grow by one per election, and an
 * election takes at least an election timeout (30 ms at the least that
 * can be configured). So:
 *  1. Mandi remembers the highest term it accepted (hi) and when a PUT
 *     last carried it, also after the leader entry expires. Only when no
 *     PUT has carried hi for MANDI_TERM_MEMORY_MS does the next accepted
 *     lower term replace it (an absurd term nobody refreshes stops
 *     counting).
 *  2. A PUT above hi + MANDI_TERM_JUMP + one term per MANDI_TERM_GROWTH_MS
 *     since hi was last carried is refused (400 `implausible term`). The
 *     allowance grows with silence, far faster than elections can, so a
 *     cluster that went through many elections while it could not reach
 *     mandi is never refused; the jump covers elections between two PUTs.
 *  3. With nothing remembered (mandi just started) any term is accepted: a
 *     restarted mandi must take the real leader's term, however high.
 *  4. A PUT below the live leader's term is stale (409) only when it is
 *     within MANDI_TERM_JUMP of it. A live term more than that above a
 *     PUT is not plausible (a deposed leader trails its successor by a few
 *     terms, and steps down within an election timeout): the PUT replaces
 *     it. So an absurd term taken while mandi knew nothing cannot lock the
 *     real leader out: its next PUT wins.
 * What this leaves an attacker without the cluster token: it can still
 * publish a fake leader at the current term or up to the ceiling (GET
 * /leader tells it the term) and refresh it. A higher term keeps the real
 * leader out (409) as long as it refreshes, until the cluster's own term
 * passes it; an equal term, or any term just after a restart, alternates
 * with the real leader's PUTs. Only the token stops forgery. */
#define MANDI_TERM_JUMP 1000                   /* terms above hi, at once */
#define MANDI_TERM_GROWTH_MS 1                 /* one more term per this */
#define MANDI_TERM_MEMORY_MS (10u * 60 * 1000) /* hi unconfirmed this long */

struct mandi_terms {
    bool known;     /* a term was accepted since mandi started */
    uint64_t hi;    /* the highest term accepted recently */
    uint64_t hi_at; /* ms: when an accepted PUT last carried hi */
};

enum mandi_term_verdict {
    MANDI_TERM_OK,          /* store the PUT */
    MANDI_TERM_DISPUTED,    /* store it: the live leader's term is more than
                               MANDI_TERM_JUMP above, not plausible (rule 4) */
    MANDI_TERM_STALE,       /* 409: below the live leader's term (rule 4) */
    MANDI_TERM_IMPLAUSIBLE, /* 400: above mandi_term_ceiling() (rule 2) */
};

/* The highest term a PUT may carry at now (ms): UINT64_MAX when nothing
 * is known. Saturates rather than wraps. */
uint64_t mandi_term_ceiling(const struct mandi_terms *t, uint64_t now);
/* The verdict on a PUT of term at now; live: a leader is held and has not
 * expired, with live_term. Changes nothing. */
enum mandi_term_verdict mandi_term_check(const struct mandi_terms *t, bool live,
                                         uint64_t live_term, uint64_t term,
                                         uint64_t now);
/* Record an accepted PUT of term at now (rule 1). */
void mandi_term_accept(struct mandi_terms *t, uint64_t term, uint64_t now);

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
    uint64_t header_timeout_ms; /* first byte to end of headers (408) */
    uint64_t body_timeout_ms;   /* end of headers to end of body (408);
                                   also output left unread this long */
    const struct tls_slot *tls; /* HTTPS (tls.h), borrowed; NULL: plain
                                   HTTP */
};

struct mandi;

/* Options from the configuration: mandi-addr's host:port, cluster-token
 * (borrowed from cfg), the mandi-* directives, max-clients, the http-*
 * limits (the body capped at MANDI_MAX_BODY), conn-high-water and the
 * client header and body timeouts.
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
