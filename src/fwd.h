/* fwd.h - forwarding of HTTP requests from a follower to the leader.
 *
 * One kept-alive HTTP/1.1 connection per leader address (httpc.h) carries
 * every forwarded request, pipelined, with the responses matched in order.
 * No connection is opened per request and nothing asks mandi. The whole
 * response (status, Content-Type, Allow, body) comes back to the caller.
 *
 * Retries, only where they are safe: a request that never reached the
 * leader (the connection could not be made), or that the node taken for
 * the leader refused because it is not the leader any more (503
 * FWD_NOT_LEADER: it restarted or lost an election; or 503 FWD_NO_LEADER:
 * it knew no leader either; both before proposing anything), is sent
 * again, whatever it is; one lost with its connection after it was
 * written is sent again only when the caller marks it idempotent (a read),
 * since a write may have been applied. The first resend of a lost request
 * goes at once (a kept-alive connection the leader closed, a restarted
 * leader), the others after a pause of 50 ms doubling to 400 ms, each to
 * the leader's address known then, until the retry window given to
 * fwd_set_retry() has passed since fwd_send(); past it the request fails
 * with its last error (a refusal: with that answer). When no other node is
 * known to lead any more (an election, or this node won it) it fails with
 * PZ_ELEADERCHANGE: the caller starts the request over (propose it here,
 * or wait for a leader).
 *
 * Memory: a request's body is not copied until it is written to the
 * connection, which takes one more while little waits on it (httpc.h), so
 * one whose caller cancels it before then holds nothing here any more.
 * What waits on the connection counts against max-pending-output like a
 * client's output (conn_count_output); the caller charges what it keeps.
 * The leader's answer is kept once: its body arrives in a buffer as large
 * as its Content-Length, which the caller's hold() grants before it is
 * made (and so counts, see fwd_req.hold), and which becomes the request's
 * body, not copied.
 *
 * A forwarded request carries `X-Pyazdb-Forwarded: 1`; a node that gets one
 * while it is not the leader answers 503 rather than forwarding again, so a
 * request never loops between nodes that disagree about the leader. The
 * leader's answer to a forwarded /txn whose branch only read carries
 * `X-Pyazdb-Nothing-Written: 1` (fwd_req.nothing_written): a follower that
 * has no room for the answer refuses it as a read, not as an applied
 * write.
 *
 * The leader is trusted with the data, not with our memory or time: a
 * response whose status line and headers pass FWD_MAX_HEADER_BYTES or
 * whose body passes FWD_MAX_BODY fails (PZ_EPROTO), and so does every
 * request on that connection; so does one not answered within the timeout
 * given to fwd_setup() (PZ_ETIMEDOUT). */
#ifndef PZ_FWD_H
#define PZ_FWD_H

#include <stdbool.h>
#include <uv.h>

#include "pz.h"

#define FWD_HEADER "X-Pyazdb-Forwarded"
/* The 503 body a node that is not the leader answers a forwarded request
 * with (before proposing anything), without its final newline. */
#define FWD_NOT_LEADER "Not the leader"
/* The 503 body a node answers a write with when it knew no leader for
 * request-timeout (it proposed nothing), without its final newline. */
#define FWD_NO_LEADER "Not leader and no leader known"
#define FWD_MAX_HEADER_BYTES (64 * 1024) /* status line + headers */
#define FWD_MAX_BODY (64u * 1024 * 1024) /* response body */

struct fwd_link;
struct fwd_req;
struct fwd_wait;
/* status 0: the response is in the fields below; < 0, after the retries
 * above: the leader could not be reached (FWD_UNSENT(status): nothing was
 * sent), the connection broke before the response (PZ_EIO), the response
 * was malformed or over the limits above (PZ_EPROTO), did not come in
 * time (PZ_ETIMEDOUT), the leader changed (PZ_ELEADERCHANGE, see
 * above; nothing was sent, or only what is safe to send again), or hold()
 * refused room for the answer's body (PZ_ENOSPC: the leader did answer,
 * http_status, revision and nothing_written say how; its body was
 * dropped). */
typedef void (*fwd_cb)(struct fwd_req *r, int status);

struct fwd_req {
    fwd_cb cb;              /* called once unless cancelled */
    int http_status;        /* the leader's status code */
    char content_type[128]; /* its Content-Type, "" if none */
    char allow[64];         /* its Allow header, "" if none */
    uint64_t revision;      /* its X-Pyazdb-Revision, 0 if none */
    bool has_revision;      /* it sent one (http_parse_revision's) */
    bool nothing_written;   /* it said the request changed nothing */
    struct pz_buf body;     /* its body (fwd_send initializes, caller
                               frees with pz_buf_free) */
    const char *auth;       /* set before fwd_send: bearer token sent as
                               Authorization (NULL or "": none) */
    bool idempotent;        /* set before fwd_send: may be sent again
                               after it was lost with its connection */
    /* Set before fwd_send, or NULL: the answer arriving would hold bytes
     * in all (its body's buffer, which becomes body); true: the caller
     * counts them until it frees body; false: the request fails with
     * PZ_ENOSPC. Called with 0 when what it granted is let go before cb
     * (the answer failed, or the request goes again). */
    bool (*hold)(struct fwd_req *r, size_t bytes);
    /* internal */
    struct fwd_link *link;  /* NULL when not in flight */
    uint64_t id;            /* the request on link */
    const char *method;     /* fwd_send's arguments, borrowed: */
    const char *target;     /*   the caller keeps them until cb */
    const char *sbody;      /*   (sent again on a retry) */
    size_t sblen;
    uint64_t retry_until;   /* uv_now() past which no retry starts */
    uint64_t pause;         /* next retry pause, ms (0: at once) */
    struct fwd_wait *wait;  /* a retry waiting for its pause, or NULL */
};

/* A connect error: the request never reached the leader. */
#define FWD_UNSENT(status)                                                   \
    ((status) < 0 && (status) != PZ_EIO && (status) != PZ_EPROTO &&          \
     (status) != PZ_ETIMEDOUT && (status) != PZ_ELEADERCHANGE &&             \
     (status) != PZ_ECANCELED && (status) != PZ_ESHUTDOWN)

/* Forwarding runs on loop; every request must be answered within
 * timeout_ms of being sent (0: no limit, the default). */
void fwd_setup(uv_loop_t *loop, uint64_t timeout_ms);
/* Retries start within retry_ms of fwd_send(), each to leader_addr() (the
 * leader's address now; NULL when this node leads or none is known).
 * Without this call (retry_ms 0) nothing is retried. */
void fwd_set_retry(uint64_t retry_ms, const char *(*leader_addr)(void));
/* Send method target (the original request target, e.g. "/set") with body
 * to addr ("host:port"); method, target and body are borrowed until cb.
 * Returns 0: cb comes later, never from inside the call (an address that
 * cannot be dialled fails it with PZ_EINVAL). */
int fwd_send(struct fwd_req *r, const char *addr, const char *method,
             const char *target, const char *body, size_t blen, fwd_cb cb);
/* Forget r: no callback will come. Idempotent. */
void fwd_cancel(struct fwd_req *r);
/* Shutdown: close every forwarding connection; their requests, and those
 * waiting to be retried, fail (at once, from inside the call). */
void fwd_close_all(void);

#endif
