/* fwd.h - forwarding of HTTP requests from a follower to the leader.
 *
 * One kept-alive HTTP/1.1 connection per leader address (httpc.h) carries
 * every forwarded request, pipelined, with the responses matched in order.
 * No connection is opened per request and nothing asks mandi. The whole
 * response (status, Content-Type, Allow, body) comes back to the caller.
 * A request is sent once: a write must not be applied twice.
 *
 * A forwarded request carries `X-Pyazdb-Forwarded: 1`; a node that gets one
 * while it is not the leader answers 503 rather than forwarding again, so a
 * request never loops between nodes that disagree about the leader.
 *
 * The leader is trusted with the data, not with our memory or time: a
 * response whose status line and headers pass FWD_MAX_HEADER_BYTES or
 * whose body passes FWD_MAX_BODY fails (PZ_EPROTO), and so does every
 * request on that connection; so does one not answered within the timeout
 * given to fwd_setup() (PZ_ETIMEDOUT). */
#ifndef PZ_FWD_H
#define PZ_FWD_H

#include <uv.h>

#include "pz.h"

#define FWD_HEADER "X-Pyazdb-Forwarded"
#define FWD_MAX_HEADER_BYTES (64 * 1024) /* status line + headers */
#define FWD_MAX_BODY (64u * 1024 * 1024) /* response body */

struct fwd_link;
struct fwd_req;
/* status 0: the response is in the fields below; < 0: the leader could not
 * be reached or the connection broke before the response (PZ_EIO), the
 * response was malformed or over the limits above (PZ_EPROTO), or did not
 * come in time (PZ_ETIMEDOUT). */
typedef void (*fwd_cb)(struct fwd_req *r, int status);

struct fwd_req {
    fwd_cb cb;              /* called once unless cancelled */
    int http_status;        /* the leader's status code */
    char content_type[128]; /* its Content-Type, "" if none */
    char allow[64];         /* its Allow header, "" if none */
    struct pz_buf body;     /* its body (fwd_send initializes, caller
                               frees with pz_buf_free) */
    const char *auth;       /* set before fwd_send: bearer token sent as
                               Authorization (NULL or "": none) */
    struct fwd_link *link;  /* internal: NULL when not in flight */
    uint64_t id;            /* internal: the request on link */
};

/* Forwarding runs on loop; every request must be answered within
 * timeout_ms of being sent (0: no limit, the default). */
void fwd_setup(uv_loop_t *loop, uint64_t timeout_ms);
/* Send method target (the original request target, e.g. "/set") with body
 * to addr ("host:port"). Returns 0: cb comes later, never from inside the
 * call (an address that cannot be dialled fails it with PZ_EIO). */
int fwd_send(struct fwd_req *r, const char *addr, const char *method,
             const char *target, const char *body, size_t blen, fwd_cb cb);
/* Forget r: no callback will come. Idempotent. */
void fwd_cancel(struct fwd_req *r);
/* Shutdown: close every forwarding connection; their requests fail (at
 * once, from inside the call). */
void fwd_close_all(void);

#endif
